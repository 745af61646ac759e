"""SMTP side by side (issue 16): a private Postfix (``bench/anchors.py``), Mailhost's ingress
workers and the naive aiosmtpd handler of ``bench/smtp_ingest.py``, in one run, alternating
rounds (the order rotates each round), same messages and mailboxes for all three.

Cells:

* ``smtp-source`` (Postfix's own load generator, a new connection per message, as the
  Internet delivers) at 4 KiB and 100 KiB, C = 1 / 8 / 32: accepted msg/s, and server CPU
  per message (all processes of each server: Postfix's master and every child, reaped ones
  included; for Postfix measured after its queue drained into the Maildirs, since Postfix
  answers 250 once queued and delivers afterwards, while Mailhost delivers before 250).
* the pipelining client of ``bench/smtp_ingest.py`` (RFC 2920, connections reused).
* RCPT latency p50 / p99 with N mailboxes in N/10 domains (100,000 in 10,000 by default),
  every address new (no cache helps): one RCPT at a time, 50 per connection.
* cross-impact: four connections send 4 KiB messages to a mailbox of 50,000 messages (with a
  quota, so Mailhost's RCPT checks its usage) while another connection sends to an empty
  mailbox (also with a quota): the latter's msg/s.

Each cell prints the median of the rounds with min-max, and Mailhost / Postfix as the median
of the per-round ratios (each round's pair ran back to back). Postfix is installed with
apt-get when missing (as root); without it the bench runs the other two and says so.

Usage: make bench BENCH=bench/anchor_smtp.py
       .venv/bin/python bench/anchor_smtp.py [--quick] [--rounds 5] [--messages 1000]
           [--workers 2] [--sizes 4096,102400] [--concurrency 1,8,32]
           [--rcpt-mailboxes 100000] [--rcpt-samples 2000] [--full-messages 50000]
           [--cells source,pipelined,rcpt,cross] [--targets split:uvloop,split:asyncio,serve]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import insert, update  # noqa: E402

from app.config import Settings  # noqa: E402
from app.db import make_engine, make_session_factory, transaction  # noqa: E402
from app.models import Customer, Domain, Mailbox  # noqa: E402
from bench.anchors import SMTP_SOURCE, PostfixAnchor, tree_cpu_seconds  # noqa: E402
from bench.mailhost_targets import Running, Target, parse_targets, stamp_head, start  # noqa: E402
from bench.smtp_ingest import (  # noqa: E402
    DOMAIN,
    LeanClient,
    make_message,
    run_load,
    seed,
    start_baseline,
)

RCPT_PER_CONNECTION = 50
QUOTA = 100 * 1024**3  # a quota for the cross-impact mailboxes: Mailhost checks usage at RCPT
FULL, EMPTY = f"full@{DOMAIN}", f"empty@{DOMAIN}"


@dataclass
class Server:
    name: str
    port: int
    cpu: Callable[[], float]
    settle: Callable[[], None] = lambda: None  # wait for deferred work (Postfix's queue)


@dataclass
class Cell:
    """One row: per server, the samples of each round (rate or latency) and CPU ms/msg."""

    title: str
    unit: str
    values: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def add(self, server: str, value: float, cpu_ms: float | None = None) -> None:
        self.values.setdefault(server, []).append(value)
        if cpu_ms is not None:
            self.cpu.setdefault(server, []).append(cpu_ms)


def fmt(values: list[float], digits: int) -> str:
    med = statistics.median(values)
    return f"{med:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def _ours(names: list[str]) -> list[str]:
    return [n for n in names if n.startswith(("mailhost", "mh:"))]


def print_cell(cell: Cell, names: list[str], higher_is_better: bool = True) -> None:
    digits = 0 if cell.unit == "msg/s" else 2
    parts = [f"{n}: {fmt(cell.values[n], digits)}" for n in names if n in cell.values]
    line = f"{cell.title:<34} {cell.unit:<6} " + "  ".join(parts)
    for ours in _ours(names):
        if "postfix" in cell.values and ours in cell.values:
            pairs = zip(cell.values[ours], cell.values["postfix"], strict=True)
            ratio = statistics.median((m / p if higher_is_better else p / m) for m, p in pairs)
            line += f"  {ours}/postfix {ratio:.2f}x"
    print(line, flush=True)
    if cell.cpu:
        parts = [f"{n}: {fmt(cell.cpu[n], 2)}" for n in names if n in cell.cpu]
        line = f"{'  server CPU per message':<34} {'ms':<6} " + "  ".join(parts)
        for ours in _ours(names):
            if "postfix" in cell.cpu and ours in cell.cpu:
                ratio = statistics.median(cell.cpu[ours]) / statistics.median(cell.cpu["postfix"])
                line += f"  {ours}/postfix {ratio:.2f}x the CPU"
        print(line + f"  (load {os.getloadavg()[0]:.1f})", flush=True)


def rotated(servers: list[Server], round_no: int) -> list[Server]:
    k = round_no % len(servers)
    return servers[k:] + servers[:k]


# --------------------------------------------------------------------------- seeding
def seed_rcpt_mailboxes(settings: Settings, count: int) -> list[str]:
    """``count`` mailboxes in ``count // 10`` domains, inserted in bulk; returns addresses."""
    domains = max(1, count // 10)
    engine = make_engine(settings)
    factory = make_session_factory(engine)
    with transaction(factory) as s:
        customer = Customer(name="Bench RCPT")
        s.add(customer)
        s.flush()
        s.execute(
            insert(Domain),
            [{"name": f"d{j}.rcpt.example", "customer_id": customer.id} for j in range(domains)],
        )
    with transaction(factory) as s:
        ids = dict(s.query(Domain.name, Domain.id).filter(Domain.name.like("%.rcpt.example")).all())
        rows = [
            {
                "domain_id": ids[f"d{i % domains}.rcpt.example"],
                "local_part": f"r{i}",
                "password_hash": "x",
                "quota_bytes": 0,
            }
            for i in range(count)
        ]
        s.execute(insert(Mailbox), rows)
    engine.dispose()
    return [f"r{i}@d{i % domains}.rcpt.example" for i in range(count)]


def seed_cross(settings: Settings) -> None:
    engine = make_engine(settings)
    with transaction(make_session_factory(engine)) as s:
        domain_id = s.query(Domain.id).filter(Domain.name == DOMAIN).scalar()
        for local in ("full", "empty"):
            s.add(
                Mailbox(domain_id=domain_id, local_part=local, password_hash="x", quota_bytes=QUOTA)
            )
        s.flush()
        s.execute(
            update(Mailbox)
            .where(Mailbox.local_part.in_(["full", "empty"]))
            .values(quota_bytes=QUOTA)
        )
    engine.dispose()


def populate(maildir: Path, count: int, size: int, owner: tuple[int, int] | None) -> None:
    """``count`` messages in ``maildir/cur`` named as Mailhost names them (``S=``/``W=``)."""
    body = make_message(size).replace(b"\r\n", b"\n")
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
        if owner:
            os.chown(maildir / sub, *owner)
    if owner:
        os.chown(maildir, *owner)
        os.chown(maildir.parent, *owner)
    now = int(time.time()) - 86400
    for n in range(count):
        name = f"{now}.M{n}P1Q{n}.bench,S={len(body)},W={size}:2,S"
        with open(maildir / "cur" / name, "wb") as fh:
            fh.write(body)


# --------------------------------------------------------------------------- loads
def smtp_source(server: Server, size: int, n: int, c: int, rcpt: str) -> tuple[float, float]:
    """msg/s and server CPU ms per message for ``n`` messages from ``smtp-source``."""
    cpu0 = server.cpu()
    start = time.perf_counter()
    result = subprocess.run(
        [
            SMTP_SOURCE,
            "-l",
            str(size),
            "-m",
            str(n),
            "-s",
            str(c),
            "-f",
            "bench@remote.example",
            "-t",
            rcpt,
            "-M",
            "client.remote.example",
            f"127.0.0.1:{server.port}",
        ],
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"smtp-source against {server.name} failed: {result.stderr.strip()}")
    server.settle()
    return n / elapsed, (server.cpu() - cpu0) * 1000 / n


def pipelined(server: Server, size: int, n: int, c: int, rcpts: list[str]) -> tuple[float, float]:
    cpu0 = server.cpu()
    elapsed, ok, failed = asyncio.run(run_load(server.port, rcpts, n, c, make_message(size)))
    if failed or ok != n:
        raise SystemExit(f"pipelined load against {server.name}: {ok} accepted, {failed} refused")
    server.settle()
    return ok / elapsed, (server.cpu() - cpu0) * 1000 / ok


def read_reply(sock: socket.socket, buffer: bytearray) -> bytes:
    while True:
        end = buffer.find(b"\r\n")
        while end >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 2]
            if line[3:4] != b"-":
                return line
            end = buffer.find(b"\r\n")
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        buffer += data


def rcpt_latencies(server: Server, addresses: list[str]) -> list[float]:
    """Seconds per RCPT round trip, one RCPT at a time, a new connection per 50 RCPTs."""
    out: list[float] = []
    for first in range(0, len(addresses), RCPT_PER_CONNECTION):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            buf = bytearray()
            read_reply(sock, buf)
            for command in (
                b"EHLO client.remote.example\r\n",
                b"MAIL FROM:<bench@remote.example>\r\n",
            ):
                sock.sendall(command)
                read_reply(sock, buf)
            for address in addresses[first : first + RCPT_PER_CONNECTION]:
                start = time.perf_counter()
                sock.sendall(b"RCPT TO:<%s>\r\n" % address.encode())
                reply = read_reply(sock, buf)
                out.append(time.perf_counter() - start)
                if not reply.startswith(b"250"):
                    raise SystemExit(f"{server.name} refused {address}: {reply!r}")
            sock.sendall(b"QUIT\r\n")
            read_reply(sock, buf)
    return out


async def cross_impact(port: int, n: int, message: bytes) -> float:
    """msg/s to EMPTY over one connection while four connections keep sending to FULL."""
    loop = asyncio.get_running_loop()
    payload = message + b".\r\n"

    def jobs(rcpt: str, count: int) -> list[bytes]:
        envelope = b"MAIL FROM:<bench@remote.example> SIZE=%d\r\nRCPT TO:<%s>\r\nDATA\r\n"
        return [envelope % (len(message), rcpt.encode()) for _ in range(count)]

    background = jobs(FULL, 100_000)
    noisy = []
    for _ in range(4):
        done: asyncio.Future[None] = loop.create_future()
        _, proto = await loop.create_connection(
            lambda d=done: LeanClient(background, payload, d), "127.0.0.1", port
        )
        noisy.append(proto)
    await asyncio.sleep(0.5)  # the four are under way
    done = loop.create_future()
    start = time.perf_counter()
    _, probe = await loop.create_connection(
        lambda: LeanClient(jobs(EMPTY, n), payload, done), "127.0.0.1", port
    )
    await asyncio.wait_for(done, 600)
    elapsed = time.perf_counter() - start
    background.clear()  # the four finish their current message and QUIT
    await asyncio.wait_for(asyncio.gather(*(c.done for c in noisy)), 600)
    return probe.ok / elapsed


# --------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short run: fewer rounds/messages")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--messages", type=int, help="per cell, server and round")
    parser.add_argument("--workers", type=int, default=2, help="Mailhost ingress processes")
    parser.add_argument("--sizes", default="4096,102400")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--rcpt-mailboxes", type=int)
    parser.add_argument("--rcpt-samples", type=int, help="RCPTs per server and round")
    parser.add_argument("--full-messages", type=int, help="messages in the full mailbox")
    parser.add_argument("--cells", default="source,pipelined,rcpt,cross")
    parser.add_argument(
        "--targets",
        default="workers",
        help="how Mailhost runs, comma-separated: workers (N python -m smtp_ingress), split"
        " (mailhost smtp --workers N), serve (mailhost serve); each with :uvloop or :asyncio"
        " (bench/mailhost_targets.py)",
    )
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="also run another checkout's code as a workers target"
        " (git archive main | tar -x -C DIR)",
    )
    args = parser.parse_args()
    quick = args.quick
    rounds = args.rounds or (2 if quick else 5)
    messages = args.messages or (200 if quick else 1000)
    rcpt_boxes = args.rcpt_mailboxes or (10_000 if quick else 100_000)
    rcpt_samples = args.rcpt_samples or (300 if quick else 2000)
    full_messages = args.full_messages or (10_000 if quick else 50_000)
    cells = set(args.cells.split(","))
    sizes = [int(s) for s in args.sizes.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]
    rcpt_samples = min(rcpt_samples, rcpt_boxes // rounds)

    with tempfile.TemporaryDirectory(prefix="mh-anchor-smtp-") as folder:
        root = Path(folder)
        settings = Settings(
            database_url=f"sqlite:///{root / 'bench.db'}",
            maildir_root=root / "mail",
            _env_file=None,  # type: ignore[call-arg]
        )
        t0 = time.perf_counter()
        rcpts = seed(settings, 50)
        rcpt_addresses = seed_rcpt_mailboxes(settings, rcpt_boxes) if "rcpt" in cells else []
        seed_cross(settings)
        boxes: dict[str, list[str]] = {DOMAIN: [a.split("@")[0] for a in rcpts] + ["full", "empty"]}
        for address in rcpt_addresses:
            local, domain = address.split("@")
            boxes.setdefault(domain, []).append(local)
        postfix = PostfixAnchor.create(root / "postfix", boxes)
        if "cross" in cells:
            populate(settings.maildir_root / DOMAIN / "full", full_messages, 4096, None)
            if postfix is not None:
                nobody = (65534, 65534)
                populate(postfix.mail / DOMAIN / "full", full_messages, 4096, nobody)
        print(f"seeded in {time.perf_counter() - t0:.1f}s", flush=True)

        (root / "plain").mkdir()
        targets = parse_targets(args.targets)
        if args.baseline_tree is not None:
            targets.append(Target("workers", "auto", args.baseline_tree.resolve()))
        if any(t.shape == "serve" for t in targets):
            stamp_head(settings)
        ours: list[Running] = []
        base: list[subprocess.Popen[str]] = []
        servers = []
        try:
            for target in targets:
                running = start(target, settings, args.workers, root)
                ours.append(running)
                name = "mailhost" if len(targets) == 1 else f"mh:{target.label}"
                servers.append(Server(name, running.port, running.cpu_seconds))
            base, base_port = start_baseline(root / "plain", 1)
            servers.append(
                Server("naive", base_port, lambda: sum(tree_cpu_seconds(p.pid) for p in base))
            )
            if postfix is not None:
                postfix.start()
        except BaseException:
            for running in ours:
                running.stop()
            for proc in base:
                proc.terminate()
            raise
        if postfix is not None:
            servers.insert(
                0,
                Server(
                    "postfix",
                    postfix.port,
                    postfix.cpu_seconds,
                    lambda: postfix.wait_drained() and None,
                ),
            )
        names = [s.name for s in servers]
        print(
            f"servers: {', '.join(names)} (mailhost: {args.targets}, {args.workers} worker(s),"
            " greet delay 0;"
            f" naive: 1 process); cpus={os.cpu_count()}; {rounds} alternating rounds of"
            f" {messages} messages; medians (min-max); load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        try:
            if "source" in cells:
                for size in sizes:
                    for c in levels:
                        cell = Cell(f"smtp-source {size // 1024} KiB C={c}", "msg/s")
                        for r in range(rounds):
                            for server in rotated(servers, r):
                                rate, cpu_ms = smtp_source(
                                    server, size, messages, c, rcpts[r % len(rcpts)]
                                )
                                cell.add(server.name, rate, cpu_ms)
                        print_cell(cell, names)
            if "pipelined" in cells:
                for size in sizes:
                    for c in (1, 8):
                        cell = Cell(f"pipelined reused {size // 1024} KiB C={c}", "msg/s")
                        for r in range(rounds):
                            for server in rotated(servers, r):
                                rate, cpu_ms = pipelined(server, size, messages, c, rcpts)
                                cell.add(server.name, rate, cpu_ms)
                        print_cell(cell, names)
            if "rcpt" in cells:
                shuffled = rcpt_addresses[:]
                random.Random(16).shuffle(shuffled)
                p50 = Cell(f"RCPT p50, {rcpt_boxes} mailboxes", "ms")
                p99 = Cell(f"RCPT p99, {rcpt_boxes // 10} domains", "ms")
                for r in range(rounds):
                    chunk = shuffled[r * rcpt_samples : (r + 1) * rcpt_samples]
                    for server in rotated(servers, r):
                        lat = sorted(rcpt_latencies(server, chunk))
                        p50.add(server.name, lat[len(lat) // 2] * 1000)
                        p99.add(server.name, lat[min(len(lat) - 1, len(lat) * 99 // 100)] * 1000)
                print_cell(p50, names, higher_is_better=False)
                print_cell(p99, names, higher_is_better=False)
            if "cross" in cells:
                cell = Cell(f"to empty while 4 conns fill {full_messages // 1000}k", "msg/s")
                n = max(50, messages // 4)
                for r in range(rounds):
                    for server in rotated(servers, r):
                        cell.add(
                            server.name,
                            asyncio.run(cross_impact(server.port, n, make_message(4096))),
                        )
                        server.settle()
                print_cell(cell, names)
        finally:
            if postfix is not None:
                postfix.stop()
            for running in ours:
                running.stop()
            for proc in base:
                proc.terminate()
            for proc in base:
                proc.wait(30)
    print(
        "mailhost/postfix: median of per-round ratios (for ms: postfix/mailhost, >1 = faster);"
        " CPU = all processes of each server; Postfix CPU includes delivery after its queue"
        " drained. Goal (issue 16): >= 1.2x Postfix in every cell."
    )


if __name__ == "__main__":
    main()
