"""End-to-end outbound delivery benchmark: Mailhost's delivery agent against a private Postfix.

The load: N messages (default 10,000, 4 KiB each, one recipient each) to D remote domains
(default 100, ``d0.bench.test`` ...). The remote side: aiosmtpd sinks in a separate process,
listening on 127.0.0.2 ... 127.0.0.(1+S) on one port; domain i's MX is ``mx<i % S>``, whose A
record is sink i % S. A dnslib server (``tests/dnsserver.py``) answers the MX and A queries of
Mailhost's agent; Postfix gets the same mapping as a ``texthash`` transport map
(``smtp:[127.0.0.x]:port``, DNS off), so nothing ever asks the Internet.

Each round first puts the whole load in the engine's queue with delivery stopped, then lets it
go and times the sinks:
- Mailhost: the queue service (spool file fsync'd + one committed enqueue per message, as
  submission does) into a fresh SQLite database, then one agent process
  (``python -m smtp_outbound``, settings as shipped except the port, DNS and a 0.2 s poll).
- Postfix: a private instance (own config_directory and queue_directory in a scratch dir, own
  smtpd port on 127.0.0.1, ``postfix -c DIR``), fed with ``smtp-source`` (one run per domain,
  the same count and size), every message held by a header_checks HOLD rule; then
  ``postsuper -H ALL`` and a qmgr kick release them. Postfix's delivery settings as shipped.

The rate is (messages - 1) / (last arrival - first arrival) at the sinks, so start-up and
release latency are excluded for both; "wall" is release to last arrival. Server CPU per message
is utime + stime over that same window: the agent process for Mailhost; for Postfix the master
and its children (qmgr, smtp, ...) including reaped ones (the master's cutime/cstime). The queue
depth printed over time is the number of messages not yet received by the sinks. Rounds
alternate Mailhost, Postfix, Mailhost, Postfix...; medians are printed and the ratio of them.

Postfix: installed with apt-get when missing and running as root; otherwise the bench says how
and runs Mailhost alone.

Usage: .venv/bin/python bench/delivery.py [--messages 10000] [--domains 100] [--sinks 10]
       [--size 4096] [--rounds 2] [--no-postfix] [--agent-batch N] [--agent-profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import Settings  # noqa: E402
from app.db import make_engine, make_session_factory, transaction  # noqa: E402
from app.models import Base, utcnow  # noqa: E402
from app.services import queue  # noqa: E402
from app.spool import SpoolStore  # noqa: E402
from tests.dnsserver import TestDNSServer  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
SENDER = "bench@sender.test"
POSTFIX_DAEMONS = Path("/usr/lib/postfix/sbin")


# ------------------------------------------------------------------------------ sinks
def _sink_main(addresses: list[str], port: int, counter: Synchronized[int], ready: Any) -> None:
    """The remote MX hosts: aiosmtpd answering 250 to everything, counting messages."""
    from aiosmtpd.smtp import SMTP, Envelope, Session

    class Handler:
        async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
            with counter.get_lock():
                counter.value += 1
            return "250 2.0.0 accepted by the sink"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handler = Handler()
        for address in addresses:
            await loop.create_server(
                lambda: SMTP(handler, hostname="sink.bench.test", ident="sink"), address, port
            )
        ready.set()
        await asyncio.Event().wait()

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(main())


def free_port(addresses: list[str]) -> int:
    """A port free on every sink address (picked on the first, checked on all)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for address in addresses:
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((address, port))
            return port
        except OSError:
            continue
    raise RuntimeError("no port free on all sink addresses")


# ------------------------------------------------------------------------------ measuring
def proc_cpu(pid: int, *, children: bool = False) -> float:
    """utime + stime (+ cutime + cstime of reaped children) of one process, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except FileNotFoundError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def tree_cpu(master: int) -> float:
    """The master, its live children and (through its cutime) its reaped ones."""
    total = proc_cpu(master, children=True)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rpartition(")")[2].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if ppid == master:
            total += proc_cpu(int(entry))
    return total


@dataclass
class Result:
    engine: str
    rate: float
    wall: float
    cpu_ms: float
    inject_s: float


def watch(
    engine: str,
    counter: Synchronized[int],
    total: int,
    cpu: Callable[[], float],
    released_at: float,
    inject_s: float,
    timeout: float,
    base: int,
) -> Result:
    """Poll the sinks until ``total`` arrived after ``base`` (the count read before the
    release: a fast engine delivers some before this runs); print the depth each second."""
    first_t: float | None = None
    first_cpu = first_n = 0.0
    next_print = released_at + 1.0
    depth_line: list[str] = []
    while True:
        now = time.monotonic()
        got = counter.value - base
        if got and first_t is None:
            first_t, first_cpu, first_n = now, cpu(), float(got)
        if now >= next_print:
            depth_line.append(f"{now - released_at:.0f}s:{total - got}")
            next_print += 1.0
        if got >= total:
            break
        if now - released_at > timeout:
            raise RuntimeError(f"{engine}: only {got} of {total} arrived in {timeout:.0f}s")
        time.sleep(0.02)
    last_t, last_cpu = time.monotonic(), cpu()
    print(f"    queue depth over time ({engine}): " + " ".join(depth_line), flush=True)
    assert first_t is not None
    span = max(last_t - first_t, 1e-6)
    delivered_in_window = max(total - first_n, 1.0)
    return Result(
        engine,
        rate=(total - 1) / span,
        wall=last_t - released_at,
        cpu_ms=1000.0 * (last_cpu - first_cpu) / delivered_in_window,
        inject_s=inject_s,
    )


def body(size: int, i: int, domain: str) -> bytes:
    head = (
        f"From: {SENDER}\r\nTo: rcpt@{domain}\r\nSubject: bench {i}\r\n"
        f"Message-ID: <bench{i}@sender.test>\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    text = (line * (size // len(line) + 1))[: max(size - len(head), 0)]
    return head + text


# ------------------------------------------------------------------------------ Mailhost
def run_mailhost(
    args: argparse.Namespace, scratch: Path, port: int, dns: TestDNSServer, counter: Any
) -> Result:
    work = Path(tempfile.mkdtemp(dir=scratch, prefix="mailhost-"))
    db_url = f"sqlite:///{work / 'mailhost.db'}"
    settings = Settings(
        database_url=db_url,
        maildir_root=work / "mail",
        spool_root=work / "spool",
        _env_file=None,  # type: ignore[call-arg]
    )
    engine = make_engine(settings)
    Base.metadata.create_all(engine)
    factory = make_session_factory(engine)
    spool = SpoolStore(settings.spool_root)
    started = time.monotonic()
    for i in range(args.messages):
        domain = f"d{i % args.domains}.bench.test"
        file = spool.write([body(args.size, i, domain)])
        with transaction(factory) as s:
            queue.enqueue(
                s,
                spool_id=file.spool_id,
                size=file.size,
                sender=SENDER,
                recipients=[f"rcpt{i}@{domain}"],
                origin="submission",
                now=utcnow(),
            )
    inject_s = time.monotonic() - started
    engine.dispose()
    env = {
        **os.environ,
        "MAILHOST_DATABASE_URL": db_url,
        "MAILHOST_MAILDIR_ROOT": str(work / "mail"),
        "MAILHOST_SPOOL_ROOT": str(work / "spool"),
        "MAILHOST_HOSTNAME": "mailhost.bench.test",
        "MAILHOST_DELIVERY_PORT": str(port),
        "MAILHOST_DELIVERY_NAMESERVERS": f'["{dns.host}"]',
        "MAILHOST_DELIVERY_DNS_PORT": str(dns.port),
        "MAILHOST_DELIVERY_POLL_INTERVAL": "0.2",
        "MAILHOST_LOG_LEVEL": "WARNING",
    }
    if args.agent_batch:
        env["MAILHOST_DELIVERY_BATCH_SIZE"] = str(args.agent_batch)
    base = counter.value
    profile = ["-m", "cProfile", "-o", str(Path(args.agent_profile).resolve())]
    agent = subprocess.Popen(
        [sys.executable, *(profile if args.agent_profile else []), "-m", "smtp_outbound"],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    try:
        return watch(
            "mailhost",
            counter,
            args.messages,
            lambda: proc_cpu(agent.pid),
            time.monotonic(),
            inject_s,
            args.timeout,
            base,
        )
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------ Postfix
def ensure_postfix() -> str | None:
    """None when Postfix can run here, else why not (and how to get it)."""
    if os.geteuid() != 0:
        return "the private Postfix instance needs root (postfix -c DIR start); run as root"
    if not shutil.which("postfix") or not shutil.which("smtp-source"):
        print("installing postfix with apt-get ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["debconf-set-selections"],
            input=b"postfix postfix/main_mailer_type select No configuration\n",
            check=False,
        )
        done = subprocess.run(
            ["apt-get", "install", "-y", "-q", "postfix"], env=env, capture_output=True
        )
        if done.returncode != 0 or not shutil.which("smtp-source"):
            return "apt-get install postfix failed: " + done.stderr.decode()[-300:]
    return None


class PrivatePostfix:
    """A Postfix instance of its own: config and queue in ``root``, smtpd on 127.0.0.1:port."""

    def __init__(self, root: Path, smtpd_port: int, sink_port: int, sinks: list[str]) -> None:
        self.root = root
        self.port = smtpd_port
        self.conf = root / "etc"
        self.conf.mkdir(parents=True)
        (root / "queue").mkdir()
        (root / "data").mkdir()
        shutil.chown(root / "data", "postfix")
        transport = "".join(
            f"{d} smtp:[{ip}]:{sink_port}\n" for d, ip in sinks_by_domain(sinks).items()
        )
        (self.conf / "transport").write_text(transport)
        (self.conf / "hold").write_text("/^Subject: bench/ HOLD\n")
        (self.conf / "main.cf").write_text(
            f"""compatibility_level = 3.6
queue_directory = {root / "queue"}
data_directory = {root / "data"}
command_directory = /usr/sbin
daemon_directory = {POSTFIX_DAEMONS}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
mydestination =
local_transport = error:no local delivery in the bench
relay_domains =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
transport_maps = texthash:{self.conf / "transport"}
header_checks = regexp:{self.conf / "hold"}
smtp_dns_support_level = disabled
smtp_tls_security_level = none
maillog_file_prefixes = {root}
maillog_file = {root / "maillog"}
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
"""
        )
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            cols = line.split()
            if line[:1] not in ("", "#", " ", "\t") and len(cols) >= 8:
                if cols[0] in ("smtp", "submission", "smtps") and cols[1] == "inet":
                    continue
                cols[4] = "n"  # no chroot: nothing is copied into the scratch queue
                line = " ".join(cols)
            lines.append(line)
        lines.append(f"127.0.0.1:{smtpd_port} inet n - n - - smtpd")
        (self.conf / "master.cf").write_text("\n".join(lines) + "\n")

    def postfix(self, *command: str) -> None:
        subprocess.run(["postfix", "-c", str(self.conf), *command], check=True)

    def start(self) -> None:
        self.postfix("check")
        self.postfix("start")
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.recv(100)
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.conf), "stop"], check=False)

    @property
    def master_pid(self) -> int:
        return int((self.root / "queue" / "pid" / "master.pid").read_text().split()[0])

    def held(self) -> int:
        hold = self.root / "queue" / "hold"
        return sum(len(files) for _, _, files in os.walk(hold))

    def release(self) -> None:
        subprocess.run(["postsuper", "-c", str(self.conf), "-H", "ALL"], check=True)
        # Scan the deferred queue now (what postqueue -f asks qmgr for).
        subprocess.run(["postkick", "-c", str(self.conf), "public", "qmgr", "FA"], check=False)


def sinks_by_domain(sinks: list[str], domains: int | None = None) -> dict[str, str]:
    n = domains if domains is not None else ARGS.domains
    return {f"d{i}.bench.test": sinks[i % len(sinks)] for i in range(n)}


def run_postfix(
    args: argparse.Namespace, scratch: Path, port: int, sinks: list[str], counter: Any
) -> Result:
    root = Path(tempfile.mkdtemp(dir=scratch, prefix="postfix-"))
    os.chmod(root, 0o755)
    smtpd_port = free_port(["127.0.0.1"])
    pf = PrivatePostfix(root, smtpd_port, port, sinks)
    pf.start()
    try:
        started = time.monotonic()
        per_domain = [args.messages // args.domains] * args.domains
        for i in range(args.messages % args.domains):
            per_domain[i] += 1
        procs: list[subprocess.Popen[bytes]] = []
        for i, count in enumerate(per_domain):
            if not count:
                continue
            procs.append(
                subprocess.Popen(
                    [
                        "smtp-source",
                        "-s",
                        "2",
                        "-m",
                        str(count),
                        "-l",
                        str(args.size),
                        "-f",
                        SENDER,
                        "-t",
                        f"rcpt@d{i}.bench.test",
                        "-S",
                        "bench",
                        f"127.0.0.1:{smtpd_port}",
                    ]
                )
            )
            if len(procs) >= 8:
                procs.pop(0).wait()
        for p in procs:
            p.wait()
        deadline = time.monotonic() + args.timeout
        while pf.held() < args.messages:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix holds only {pf.held()} of {args.messages}")
            time.sleep(0.1)
        inject_s = time.monotonic() - started
        master = pf.master_pid
        base = counter.value
        released = time.monotonic()
        pf.release()
        return watch(
            "postfix",
            counter,
            args.messages,
            lambda: tree_cpu(master),
            released,
            inject_s,
            args.timeout,
            base,
        )
    finally:
        pf.stop()
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------ main
ARGS: argparse.Namespace


def main() -> None:
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--domains", type=int, default=100)
    parser.add_argument("--sinks", type=int, default=10, help="sink addresses 127.0.0.2...")
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per engine")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--no-postfix", action="store_true")
    parser.add_argument(
        "--agent-batch", type=int, default=0, help="the agent's delivery_batch_size (0: shipped)"
    )
    parser.add_argument(
        "--agent-profile", default="", help="run the agent under cProfile, write stats here"
    )
    ARGS = args = parser.parse_args()

    why_not = None if not args.no_postfix else "--no-postfix"
    if why_not is None:
        why_not = ensure_postfix()
    if why_not:
        print(
            f"Postfix not run: {why_not}. (To include it: run as root with postfix and "
            "smtp-source installed, e.g. apt-get install postfix.)"
        )

    sinks = [f"127.0.0.{2 + i}" for i in range(args.sinks)]
    port = free_port(sinks)
    counter = mp.Value("q", 0)
    ready = mp.Event()
    sink = mp.Process(target=_sink_main, args=(sinks, port, counter, ready), daemon=True)
    sink.start()
    if not ready.wait(20):
        raise RuntimeError("the sinks did not start")
    dns = TestDNSServer().start()
    for domain, ip in sinks_by_domain(sinks).items():
        host = f"mx{sinks.index(ip)}.bench.test"
        dns.zone.mx(domain, (10, host))
    for i, ip in enumerate(sinks):
        dns.zone.a(f"mx{i}.bench.test", ip)

    print(
        f"{args.messages} messages of {args.size} B to {args.domains} domains, "
        f"sinks on {sinks[0]}..{sinks[-1]}:{port}, {args.rounds} round(s) per engine"
    )
    scratch = Path(tempfile.mkdtemp(prefix="mh-bench-delivery-"))
    os.chmod(scratch, 0o755)
    results: dict[str, list[Result]] = {"mailhost": [], "postfix": []}
    try:
        for r in range(args.rounds):
            engines = ["mailhost"] if why_not else ["mailhost", "postfix"]
            for engine in engines:
                if engine == "mailhost":
                    res = run_mailhost(args, scratch, port, dns, counter)
                else:
                    res = run_postfix(args, scratch, port, sinks, counter)
                results[engine].append(res)
                print(
                    f"  round {r + 1} {engine:8}: {res.rate:7.0f} msg/s  wall {res.wall:6.1f} s  "
                    f"server CPU {res.cpu_ms:5.2f} ms/msg  (inject {res.inject_s:.1f} s)",
                    flush=True,
                )
    finally:
        dns.stop()
        sink.terminate()
        shutil.rmtree(scratch, ignore_errors=True)

    print("medians:")
    med: dict[str, tuple[float, float]] = {}
    for engine, rs in results.items():
        if rs:
            med[engine] = (
                statistics.median(x.rate for x in rs),
                statistics.median(x.cpu_ms for x in rs),
            )
            print(
                f"  {engine:8}: {med[engine][0]:7.0f} msg/s, server CPU {med[engine][1]:.2f} ms/msg"
            )
    if "postfix" in med:
        print(
            f"  mailhost/postfix rate ratio {med['mailhost'][0] / med['postfix'][0]:.2f}, "
            f"CPU per message ratio {med['mailhost'][1] / med['postfix'][1]:.2f}"
        )


if __name__ == "__main__":
    main()
