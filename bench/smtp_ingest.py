"""SMTP ingest benchmark: N messages over C concurrent connections to real ingress worker
processes (started here, against a temp SQLite database and Maildir), and in the SAME run to a
plain aiosmtpd baseline (stock ``SMTP`` class, a ``handle_DATA`` that writes the Maildir file
with tmp/fsync/rename/directory fsync; defined below, not in ``smtp_ingress``) under the same
client and concurrency, plus the disk's own write + fsync + rename rate for the same size.
Our workers log at INFO to a file, as in production (one line per transaction).

Prints accepted messages/s, MB/s, server CPU milliseconds per message (utime + stime of the
server processes from ``/proc/<pid>/stat``), the client's CPU share (``os.times``; if it nears
100 % of one core the client, not the server, is the limit), and the ratios ours/disk and
ours/baseline. Rounds alternate ours and baseline so load changes on a shared machine hit both;
the median of each is printed.

Reference (issue #3, a machine of this kind): Postfix ~1,100 msg/s at 4 KiB and ~650 at
100 KiB (C=8), the plain aiosmtpd handler ~530 and ~210: Postfix/plain ~2.1x and ~3.1x.

Usage: .venv/bin/python bench/smtp_ingest.py [--workers 2] [--baseline-workers 1]
       [--messages 1000] [--sizes 4096,102400] [--concurrency 1,8,32] [--rounds 3]
       [--mailboxes 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import Settings  # noqa: E402
from app.db import Base, make_engine, make_session_factory, transaction  # noqa: E402
from app.models import Customer, Domain, Mailbox  # noqa: E402
from app.readiness import parse_ready_line, ready_line  # noqa: E402
from bench.disk_fsync import measure as disk_rate  # noqa: E402

DOMAIN = "bench.example"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the baseline
class PlainMaildirHandler:
    """The baseline: what a plain aiosmtpd deployment writes, with Maildir's durability
    (tmp, fsync, rename into new, fsync new/), off the event loop in the default executor."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.counter = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.to_thread(self._write, envelope.content, list(envelope.rcpt_tos))
        return "250 Message accepted for delivery"

    def _write(self, content: bytes, rcpts: list[str]) -> None:
        body = content.replace(b"\r\n", b"\n")
        for rcpt in rcpts:
            box = self.root / rcpt.lower()
            for sub in ("tmp", "new", "cur"):
                (box / sub).mkdir(parents=True, exist_ok=True)
            self.counter += 1
            name = f"{time.time():.6f}.P{os.getpid()}Q{self.counter}.{socket.gethostname()}"
            tmp = box / "tmp" / name
            with open(tmp, "wb") as fh:
                fh.write(b"Delivered-To: " + rcpt.encode() + b"\n" + body)
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(tmp, box / "new" / name)
            fd = os.open(box / "new", os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


async def _serve_baseline(port: int, root: Path) -> None:
    import logging

    from aiosmtpd.smtp import SMTP

    logging.getLogger("mail.log").setLevel(logging.WARNING)
    handler = PlainMaildirHandler(root)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, decode_data=False, data_size_limit=50 * 1024 * 1024),
        host="127.0.0.1",
        port=port,
        reuse_port=True,
    )
    print(ready_line("smtp-baseline", os.getpid(), [("smtp", "127.0.0.1", port)]), flush=True)
    async with server:
        await server.serve_forever()


# --------------------------------------------------------------------------- servers
def seed(settings: Settings, mailboxes: int) -> list[str]:
    engine = make_engine(settings)
    Base.metadata.create_all(engine)
    with transaction(make_session_factory(engine)) as s:
        customer = Customer(name="Bench")
        s.add(customer)
        s.flush()
        domain = Domain(name=DOMAIN, customer_id=customer.id)
        s.add(domain)
        s.flush()
        for i in range(mailboxes):
            # quota 0 = unlimited; the hash is never used (no logins here).
            s.add(
                Mailbox(domain_id=domain.id, local_part=f"u{i}", password_hash="x", quota_bytes=0)
            )
    engine.dispose()
    return [f"u{i}@{DOMAIN}" for i in range(mailboxes)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spawn(
    argv: list[str], env: dict[str, str], workers: int, cwd: Path, log: Path | None = None
) -> list[subprocess.Popen[str]]:
    procs = []
    for _ in range(workers):
        # stderr (the log) goes to a file, as under a process supervisor; None: inherited.
        stderr = open(log, "a") if log is not None else None  # noqa: SIM115
        proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
        if stderr is not None:
            stderr.close()  # the child holds its own descriptor
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if parse_ready_line(line) is None:
            raise SystemExit(f"server failed to start: {argv} {line!r}")
        procs.append(proc)
    return procs


def start_ours(
    settings: Settings, workers: int, cwd: Path
) -> tuple[list[subprocess.Popen[str]], int]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MAILHOST_DATABASE_URL": settings.database_url,
        "MAILHOST_MAILDIR_ROOT": str(settings.maildir_root),
        "MAILHOST_HOSTNAME": "mx.bench.example",
        "MAILHOST_SMTP_PORT": str(port),
        "MAILHOST_SMTP_GREET_DELAY": "0",
        "MAILHOST_SMTP_MAX_CONNECTIONS_PER_IP": "1000",
        # INFO as in production: one line per transaction, written to a file (the figure
        # includes the logging cost).
        "MAILHOST_LOG_LEVEL": "INFO",
    }
    log = cwd / "ingress.log"
    return spawn([sys.executable, "-m", "smtp_ingress"], env, workers, cwd, log), port


def start_baseline(root: Path, workers: int) -> tuple[list[subprocess.Popen[str]], int]:
    port = free_port()
    argv = [sys.executable, __file__, "--serve-baseline", str(port), "--root", str(root)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return spawn(argv, env, workers, root), port


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (all their threads), from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return total / CLOCK_TICKS


# --------------------------------------------------------------------------- the client
def make_message(size: int) -> bytes:
    head = b"From: bench@remote.example\r\nTo: someone@bench.example\r\nSubject: bench\r\n\r\n"
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"  # 74
    body = line * ((size - len(head)) // len(line) + 1)
    return (head + body)[: size - 2].rsplit(b"\r\n", 1)[0] + b"\r\n"


class LeanClient(asyncio.Protocol):
    """A pipelining SMTP client (RFC 2920) with no per-line coroutine: MAIL, RCPT and DATA go
    in one write, the body and its final dot in a second; replies are counted, not parsed,
    beyond their code."""

    def __init__(self, jobs: list[bytes], payload: bytes, done: asyncio.Future[None]) -> None:
        self.jobs = jobs
        self.payload = payload
        self.done = done
        self.buffer = b""
        self.replies: list[bytes] = []
        self.waiting = 1  # the greeting
        self.state = "greeting"
        self.ok = 0
        self.failed = 0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
            if line[3:4] == b"-":
                continue
            self.replies.append(line)
            if len(self.replies) == self.waiting:
                replies, self.replies = self.replies, []
                self.advance(replies)

    def advance(self, replies: list[bytes]) -> None:
        if self.state == "envelope":
            if replies[2][:3] != b"354":
                self.fail(replies)
                return
            self.state, self.waiting = "body", 1
            self.transport.write(self.payload)
            return
        if self.state == "body":
            if replies[0][:3] == b"250":
                self.ok += 1
            else:
                self.failed += 1
        elif self.state == "quit":
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)
            return
        elif self.state == "greeting":
            self.state = "ehlo"
            self.transport.write(b"EHLO bench.client\r\n")
            return
        if self.jobs:
            self.state, self.waiting = "envelope", 3
            self.transport.write(self.jobs.pop())
        else:
            self.state, self.waiting = "quit", 1
            self.transport.write(b"QUIT\r\n")

    def fail(self, replies: list[bytes]) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(f"unexpected replies {replies!r}"))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"server closed the connection: {exc}"))


async def run_load(
    port: int, rcpts: list[str], n: int, concurrency: int, message: bytes
) -> tuple[float, int, int]:
    # Envelopes are built before the clock starts; SIZE as a real MTA sends it.
    jobs = [
        b"MAIL FROM:<bench@remote.example> SIZE=%d\r\nRCPT TO:<%s>\r\nDATA\r\n"
        % (len(message), rcpts[i % len(rcpts)].encode())
        for i in range(n)
    ]
    payload = message + b".\r\n"
    loop = asyncio.get_running_loop()
    clients = []
    start = time.perf_counter()
    for _ in range(concurrency):
        done: asyncio.Future[None] = loop.create_future()
        _, proto = await loop.create_connection(
            lambda d=done: LeanClient(jobs, payload, d), "127.0.0.1", port
        )
        clients.append(proto)
    await asyncio.wait_for(asyncio.gather(*(c.done for c in clients)), 600)
    elapsed = time.perf_counter() - start
    return elapsed, sum(c.ok for c in clients), sum(c.failed for c in clients)


@dataclass
class Sample:
    rate: float
    server_ms: float  # server CPU per accepted message
    client_share: float  # client CPU seconds / wall seconds
    failed: int


def measure(pids: list[int], port: int, rcpts: list[str], n: int, c: int, message: bytes) -> Sample:
    cpu0, own0 = cpu_seconds(pids), os.times()
    elapsed, ok, failed = asyncio.run(run_load(port, rcpts, n, c, message))
    cpu1, own1 = cpu_seconds(pids), os.times()
    client = (own1.user - own0.user) + (own1.system - own0.system)
    return Sample(ok / elapsed, (cpu1 - cpu0) * 1000 / max(ok, 1), client / elapsed, failed)


def median(samples: list[Sample], attr: str) -> float:
    return float(statistics.median(getattr(s, attr) for s in samples))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline-workers", type=int, default=1)
    parser.add_argument("--messages", type=int, default=1000, help="per size, C and round")
    parser.add_argument("--sizes", default="4096,102400")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mailboxes", type=int, default=50)
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        asyncio.run(_serve_baseline(args.serve_baseline, args.root))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    levels = [int(c) for c in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="mh-bench-") as folder:
        root = Path(folder)
        settings = Settings(
            database_url=f"sqlite:///{root / 'bench.db'}",
            maildir_root=root / "mail",
            _env_file=None,  # type: ignore[call-arg]
        )
        rcpts = seed(settings, args.mailboxes)
        (root / "plain").mkdir()
        ours, ours_port = start_ours(settings, args.workers, root)
        base, base_port = start_baseline(root / "plain", args.baseline_workers)
        ours_pids = [p.pid for p in ours]
        base_pids = [p.pid for p in base]
        print(
            f"ours: {args.workers} worker(s); baseline (plain aiosmtpd + Maildir fsync): "
            f"{args.baseline_workers} process(es); cpus={os.cpu_count()}; "
            f"{args.rounds} alternating round(s) of {args.messages} messages, medians; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        print(
            f"{'size':>7} {'C':>3} {'msg/s':>7} {'MB/s':>6} {'cpu ms':>6} {'cli%':>5}"
            f" {'base/s':>7} {'cpu ms':>6} {'cli%':>5} {'disk/s':>7}"
            f" {'ours/base':>9} {'ours/disk':>9}"
        )
        try:
            for size in sizes:
                message = make_message(size)
                for c in levels:
                    mine: list[Sample] = []
                    plain: list[Sample] = []
                    for _ in range(args.rounds):
                        mine.append(measure(ours_pids, ours_port, rcpts, args.messages, c, message))
                        plain.append(
                            measure(base_pids, base_port, rcpts, args.messages, c, message)
                        )
                    disk = disk_rate(size, min(args.messages, 1000), threads=c, where=root)
                    rate, base_rate = median(mine, "rate"), median(plain, "rate")
                    # Ratio of medians of per-round ratios: each round's pair ran back to back.
                    ratio = statistics.median(
                        m.rate / p.rate for m, p in zip(mine, plain, strict=True)
                    )
                    failed = sum(s.failed for s in mine + plain)
                    print(
                        f"{size:>7} {c:>3} {rate:>7.0f} {rate * size / 1e6:>6.1f}"
                        f" {median(mine, 'server_ms'):>6.2f}"
                        f" {100 * median(mine, 'client_share'):>4.0f}%"
                        f" {base_rate:>7.0f} {median(plain, 'server_ms'):>6.2f}"
                        f" {100 * median(plain, 'client_share'):>4.0f}%"
                        f" {disk:>7.0f} {ratio:>8.2f}x {rate / disk:>8.2f}x"
                        + (f"  FAILED={failed}" if failed else ""),
                        flush=True,
                    )
        finally:
            for proc in ours + base:
                proc.terminate()
            for proc in ours + base:
                proc.wait(30)
            log_lines = (root / "ingress.log").read_bytes().count(b"\n")
            print(f"ours logged {log_lines} lines at INFO to a file (one per transaction)")
    print(
        "reference: Postfix / plain aiosmtpd = 2.1x at 4 KiB, 3.1x at 100 KiB (issue #3, C=8);"
        " cpu ms = server CPU per message (all server processes); cli% = client CPU / wall"
    )


if __name__ == "__main__":
    main()
