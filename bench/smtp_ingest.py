"""SMTP ingest benchmark: N messages over C concurrent connections to real ingress worker
processes (started here, against a temp SQLite database and Maildir), printing accepted
messages/s and MB/s for each size and concurrency, next to the disk's own write + fsync +
rename rate for the same size measured in the same run, and the ratio.

Usage: .venv/bin/python bench/smtp_ingest.py [--workers 2] [--messages 1000]
       [--sizes 4096,102400] [--concurrency 1,8,32] [--mailboxes 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import Settings  # noqa: E402
from app.db import Base, make_engine, make_session_factory, transaction  # noqa: E402
from app.models import Customer, Domain, Mailbox  # noqa: E402
from bench.disk_fsync import measure as disk_rate  # noqa: E402

DOMAIN = "bench.example"


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


def start_workers(
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
        "MAILHOST_LOG_LEVEL": "WARNING",
    }
    procs = []
    for _ in range(workers):
        proc = subprocess.Popen(
            [sys.executable, "-m", "smtp_ingress"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("ready"):
            raise SystemExit(f"worker failed to start: {line!r}")
        procs.append(proc)
    return procs, port


def make_message(size: int) -> bytes:
    head = b"From: bench@remote.example\r\nTo: someone@bench.example\r\nSubject: bench\r\n\r\n"
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"  # 74
    body = line * ((size - len(head)) // len(line) + 1)
    return (head + body)[: size - 2].rsplit(b"\r\n", 1)[0] + b"\r\n"


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return line


async def client(port: int, jobs: asyncio.Queue[str], message: bytes, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _reply(reader)
    writer.write(b"EHLO bench.client\r\n")
    await _reply(reader)
    while True:
        try:
            rcpt = jobs.get_nowait()
        except asyncio.QueueEmpty:
            break
        # PIPELINING (RFC 2920): MAIL, RCPT and DATA in one write.
        writer.write(
            b"MAIL FROM:<bench@remote.example> SIZE=%d\r\nRCPT TO:<%s>\r\nDATA\r\n"
            % (len(message), rcpt.encode())
        )
        replies = [await _reply(reader) for _ in range(3)]
        if replies[2][:3] != b"354":
            raise RuntimeError(f"unexpected replies {replies!r}")
        writer.write(message + b".\r\n")
        final = await _reply(reader)
        if final[:3] == b"250":
            counts[0] += 1
        else:
            counts[1] += 1
    writer.write(b"QUIT\r\n")
    await _reply(reader)
    writer.close()


async def run_load(
    port: int, rcpts: list[str], n: int, concurrency: int, message: bytes
) -> tuple[float, int, int]:
    jobs: asyncio.Queue[str] = asyncio.Queue()
    for i in range(n):
        jobs.put_nowait(rcpts[i % len(rcpts)])
    counts = [0, 0]
    start = time.perf_counter()
    await asyncio.gather(*(client(port, jobs, message, counts) for _ in range(concurrency)))
    return time.perf_counter() - start, counts[0], counts[1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--messages", type=int, default=1000, help="per size and concurrency")
    parser.add_argument("--sizes", default="4096,102400")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--mailboxes", type=int, default=50)
    args = parser.parse_args()
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
        procs, port = start_workers(settings, args.workers, root)
        print(f"ingress: {args.workers} worker process(es) on port {port}, cpus={os.cpu_count()}")
        print(
            f"{'size':>7} {'C':>3} {'msgs':>6} {'msg/s':>8} {'MB/s':>7} {'disk f/s':>9}"
            f" {'ratio':>6}"
        )
        try:
            for size in sizes:
                message = make_message(size)
                for c in levels:
                    elapsed, ok, failed = asyncio.run(
                        run_load(port, rcpts, args.messages, c, message)
                    )
                    rate = ok / elapsed
                    disk = disk_rate(size, min(args.messages, 1000), threads=c, where=root)
                    print(
                        f"{size:>7} {c:>3} {ok:>6} {rate:>8.0f} {rate * size / 1e6:>7.1f} "
                        f"{disk:>9.0f} {rate / disk:>6.2f}"
                        + (f"  FAILED={failed}" if failed else ""),
                        flush=True,
                    )
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)


if __name__ == "__main__":
    main()
