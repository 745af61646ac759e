"""POP3 download benchmark: fill mailboxes, download them with RETR + DELE + QUIT, print rates.

    .venv/bin/python bench/pop3_download.py                 # all scenarios, SQLite in a temp dir
    .venv/bin/python bench/pop3_download.py --workers 2     # two server processes on one port
    .venv/bin/python bench/pop3_download.py --quick         # smaller counts, for a smoke run
    .venv/bin/python bench/pop3_download.py --profile /tmp/pop3.txt   # py-spy the worker

The server runs as real worker processes (``python -m pop3_service``); the client is a raw
blocking socket per user (one thread each) that receives into a preallocated buffer and only
searches for the ``CRLF.CRLF`` terminator, so that it costs far less than the server and the
figures describe the server, not the client.  Mailboxes are filled directly through
MaildirStore (no SMTP).  Figures are messages/s and MB/s of wire octets (CRLF, dot-stuffed),
from the first RETR to the QUIT reply, login excluded.

This machine is shared and noisy, so every scenario is also run, in the same run and on the same
files, against two baselines, and the ratios are what to compare between runs:

* ``disk``: reading the same message files (open, read, close) in this process;
* ``floor``: a trivial asyncio server (``--baseline-server``, another process) that answers the
  same commands by reading the file and sending it with one ``LF -> CRLF`` replace, no
  dot-stuffing, no login, no lock, no expunge.  It is what any asyncio Python server pays at
  least; the real server can only approach it.

Server CPU per message (user + system time of the server processes, from /proc) is printed for
both servers: it does not depend on how busy the other core is, unlike wall-clock rates.  The
``sys%`` column is the kernel's share of it (on loopback the sender's kernel time includes
most of the receiving side's TCP work).  ``--repeat N`` runs each scenario N times: on a shared
machine compare several runs, not one.

Reference (Dovecot on a machine of this kind): ~5,300 msg/s for 4 KiB one command at a time,
~9,000 msg/s pipelined, ~280 MB/s for 1 MiB messages.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import Settings  # noqa: E402
from app.db import Base, make_engine, make_session_factory, transaction  # noqa: E402
from app.maildir import MailboxRef, MaildirStore, MessageInfo  # noqa: E402
from app.passwords import hash_password  # noqa: E402
from app.readiness import parse_ready_line, ready_line  # noqa: E402
from app.services import customers, domains, mailboxes  # noqa: E402
from app.services.audit import CLI_ACTOR  # noqa: E402

PASSWORD = "bench password"
DOMAIN = "bench.example"
TIMEOUT = 120.0


def make_message(size: int, seq: int) -> bytes:
    """A plausible message of about ``size`` octets, some body lines starting with '.'."""
    head = (
        f"Return-Path: <sender@example.org>\nFrom: Sender <sender@example.org>\n"
        f"To: user@{DOMAIN}\nSubject: benchmark message {seq}\n"
        f"Message-ID: <{seq}.bench@example.org>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n\n"
    ).encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\n"
    dotted = b".A line that starts with a dot and needs stuffing on the wire............\n"
    body = bytearray()
    n = 0
    while len(head) + len(body) < size:
        body += dotted if n % 20 == 7 else line
        n += 1
    return head + bytes(body[: max(0, size - len(head) - 1)]) + b"\n"


def ref_of(address: str) -> MailboxRef:
    local, _, domain = address.partition("@")
    return MailboxRef(domain=domain, local_part=local)


def setup(root: Path, database_url: str, users: int) -> tuple[Settings, list[str]]:
    settings = Settings(
        database_url=database_url,
        maildir_root=root / "mail",
        hostname="bench.test",
        pop3_port=0,
        _env_file=None,  # type: ignore[call-arg]
    )
    engine = make_engine(settings)
    Base.metadata.create_all(engine)
    factory = make_session_factory(engine)
    addresses = [f"user{i}@{DOMAIN}" for i in range(users)]
    hashed = hash_password(PASSWORD)
    with transaction(factory) as db:
        customer = customers.create_customer(
            db, actor=CLI_ACTOR, name="Bench Ltd", price_per_mailbox=Decimal("1")
        )
        db.flush()
        domains.create_domain(db, actor=CLI_ACTOR, customer_id=customer.id, name=DOMAIN)
        db.flush()
        for address in addresses:
            mailboxes.create_mailbox(
                db, actor=CLI_ACTOR, address=address, password_hash=hashed, quota_bytes=10 << 30
            )
    engine.dispose()
    return settings, addresses


def fill(store: MaildirStore, address: str, count: int, size: int) -> None:
    for i in range(count):
        store.deliver([(ref_of(address), [make_message(size, i)])])


# --------------------------------------------------------------------------------- baselines
def disk_read(store: MaildirStore, addresses: list[str]) -> tuple[int, int, float]:
    """(messages, octets, seconds) to open, read and close every message file once."""
    infos = [m for a in addresses for m in store.list_messages(ref_of(a))]
    began = time.perf_counter()
    octets = 0
    for info in infos:
        with open(info.path, "rb") as fh:
            octets += len(fh.read())
    return len(infos), octets, time.perf_counter() - began


class _FloorProtocol(asyncio.Protocol):
    """The least an asyncio server must do per RETR: read the file, LF -> CRLF, write."""

    def __init__(self, store: MaildirStore) -> None:
        self.store = store
        self.buf = b""
        self.messages: list[MessageInfo] = []
        self.user = ""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(b"+OK floor\r\n")

    def pause_writing(self) -> None:
        assert self.transport is not None
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        assert self.transport is not None
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        *lines, self.buf = (self.buf + data).split(b"\r\n")
        out: list[bytes] = []
        for line in lines:
            verb, _, arg = line.partition(b" ")
            if verb == b"RETR":
                info = self.messages[int(arg) - 1]
                with open(info.path, "rb") as fh:
                    body = fh.read().replace(b"\n", b"\r\n")
                out += (b"+OK\r\n", body, b".\r\n")
            elif verb == b"USER":
                self.user = arg.decode()
                out.append(b"+OK\r\n")
            elif verb == b"PASS":
                self.messages = self.store.list_messages(ref_of(self.user))
                out.append(b"+OK\r\n")
            elif verb == b"STAT":
                out.append(f"+OK {len(self.messages)} 0\r\n".encode())
            elif verb == b"QUIT":
                out.append(b"+OK 0 deleted\r\n")
                self.transport.writelines(out)
                self.transport.close()
                return
            else:
                out.append(b"+OK\r\n")
        self.transport.writelines(out)


def serve_floor(maildir_root: Path) -> None:
    store = MaildirStore(maildir_root, hostname="bench.test", fsync=False)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _FloorProtocol(store), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        print(ready_line("pop3-floor", os.getpid(), [("pop3", "127.0.0.1", port)]), flush=True)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()

    asyncio.run(run())


# --------------------------------------------------------------------------------- servers
def _read_ready(proc: subprocess.Popen[bytes]) -> int:
    assert proc.stdout is not None
    while line := proc.stdout.readline():
        ready = parse_ready_line(line.decode(errors="replace"))
        if ready is not None:
            return ready.port("pop3")
    raise SystemExit("server failed to start")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


def start_workers(
    settings: Settings, workers: int, cwd: Path, profile: str | None
) -> tuple[int, list[subprocess.Popen[bytes]], list[int]]:
    reserve = socket.socket()
    reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    reserve.bind(("127.0.0.1", 0))
    port = reserve.getsockname()[1]
    env = {
        **os.environ,
        "MAILHOST_DATABASE_URL": settings.database_url,
        "MAILHOST_MAILDIR_ROOT": str(settings.maildir_root),
        "MAILHOST_HOSTNAME": settings.hostname,
        "MAILHOST_POP3_PORT": str(port),
        "MAILHOST_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO),
    }
    command = [sys.executable, "-m", "pop3_service"]
    procs, pids = [], []
    for n in range(workers):
        argv = command
        if profile:
            spy = Path(sys.executable).parent / "py-spy"
            out = f"{profile}.{n}" if workers > 1 else profile
            argv = [str(spy), "record", "--format", "raw", "-r", "400", "-o", out, "--", *command]
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE)
        _read_ready(proc)
        procs.append(proc)
        # Under py-spy the server is its child: account CPU to the server, not the sampler.
        pids += _children(proc.pid) if profile else [proc.pid]
    reserve.close()
    return port, procs, pids


def start_floor(maildir_root: Path) -> tuple[int, subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--baseline-server", str(maildir_root)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    return _read_ready(proc), proc


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU time of the server processes (Linux /proc)."""
    user = system = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        user += int(fields[11])  # utime, in clock ticks
        system += int(fields[12])  # stime: on loopback it includes the receiver's TCP work
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


# --------------------------------------------------------------------------------- client
class Client:
    """A raw-socket POP3 client that reads into one preallocated buffer and parses nothing
    but status lines and the multi-line terminator."""

    BUFFER = 4 << 20

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray(self.BUFFER)
        self.view = memoryview(self.buf)
        self.start = self.end = 0
        self.octets = 0
        self.line()

    def _fill(self) -> None:
        if self.start == self.end:
            self.start = self.end = 0
        elif self.BUFFER - self.end < 256 * 1024:
            kept = self.end - self.start
            self.buf[:kept] = self.buf[self.start : self.end]
            self.start, self.end = 0, kept
        got = self.sock.recv_into(self.view[self.end :])
        if not got:
            raise ConnectionError("server closed the connection")
        self.end += got

    def line(self) -> bytes:
        while (end := self.buf.find(b"\r\n", self.start, self.end)) < 0:
            self._fill()
        data = bytes(self.view[self.start : end + 2])
        self.start = end + 2
        if not data.startswith(b"+OK"):
            raise RuntimeError(f"unexpected reply {data!r}")
        return data

    def multiline(self) -> None:
        """Skip a multi-line body; only newly arrived bytes are searched."""
        while (end := self.buf.find(b"\r\n.\r\n", self.start, self.end)) < 0:
            # Everything but a possible partial terminator is counted and dropped.
            keep = max(self.start, self.end - 4)
            self.octets += keep - self.start
            self.start = keep
            self._fill()
        self.octets += end + 5 - self.start
        self.start = end + 5

    def command(self, text: bytes) -> bytes:
        self.sock.sendall(text)
        return self.line()

    def login(self, address: str) -> int:
        self.command(f"USER {address}\r\n".encode())
        self.command(f"PASS {PASSWORD}\r\n".encode())
        return int(self.command(b"STAT\r\n").split()[1])

    def download_sequential(self, count: int) -> None:
        for n in range(1, count + 1):
            self.command(b"RETR %d\r\n" % n)
            self.multiline()
            self.command(b"DELE %d\r\n" % n)

    def download_pipelined(self, count: int, batch: int = 32) -> None:
        """Keep one to two batches of RETR + DELE in flight (RFC 2449 PIPELINING)."""
        sent = answered = 0

        def send_batch() -> None:
            nonlocal sent
            upto = min(count, sent + batch)
            self.sock.sendall(
                b"".join(b"RETR %d\r\nDELE %d\r\n" % (n, n) for n in range(sent + 1, upto + 1))
            )
            sent = upto

        send_batch()
        while answered < count:
            if sent < count and sent - answered <= batch:
                send_batch()
            self.line()
            self.multiline()
            self.line()
            answered += 1

    def quit(self) -> None:
        self.command(b"QUIT\r\n")
        self.sock.close()


@dataclass
class Result:
    messages: int
    octets: int
    seconds: float
    server_cpu: float
    server_sys: float
    client_cpu: float


def run_users(port: int, addresses: list[str], pipelined: bool, pids: list[int]) -> Result:
    clients = [Client(port) for _ in addresses]
    counts = [c.login(a) for c, a in zip(clients, addresses, strict=True)]
    # Logins (argon2 on purpose) are not part of the download figures.
    time.sleep(0.05)
    errors: list[BaseException] = []

    def one(client: Client, count: int) -> None:
        try:
            if pipelined:
                client.download_pipelined(count)
            else:
                client.download_sequential(count)
            client.quit()
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    threads = [
        threading.Thread(target=one, args=(c, n)) for c, n in zip(clients, counts, strict=True)
    ]
    (user_before, sys_before), client_before = cpu_seconds(pids), os.times()
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    client_after = os.times()
    user_after, sys_after = cpu_seconds(pids)
    if errors:
        raise errors[0]
    return Result(
        messages=sum(counts),
        octets=sum(c.octets for c in clients),
        seconds=seconds,
        server_cpu=user_after + sys_after - user_before - sys_before,
        server_sys=sys_after - sys_before,
        client_cpu=(client_after.user + client_after.system)
        - (client_before.user + client_before.system),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="server processes (one port)")
    parser.add_argument("--database-url", default=None, help="default: SQLite in a temp dir")
    parser.add_argument("--quick", action="store_true", help="a tenth of the messages")
    parser.add_argument("--times", type=int, default=1, help="multiply message counts")
    parser.add_argument("--profile", default=None, help="py-spy raw profile of the worker(s)")
    parser.add_argument("--only", default=None, help="run scenarios whose label contains this")
    parser.add_argument("--repeat", type=int, default=1, help="run each scenario N times")
    parser.add_argument("--baseline-server", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_server:
        serve_floor(Path(args.baseline_server))
        return
    small, large = 1000 * args.times, 100 * args.times
    if args.quick:
        small, large = small // 10, large // 10
    scenarios = [
        # label, message size, messages per user, users, pipelined
        (f"4 KiB x {small}, 1 user", 4096, small, 1, False),
        (f"4 KiB x {small}, 1 user, pipelined", 4096, small, 1, True),
        (f"4 KiB x {small}, 4 users", 4096, small, 4, False),
        (f"1 MiB x {large}, 1 user", 1 << 20, large, 1, False),
        (f"1 MiB x {large}, 1 user, pipelined", 1 << 20, large, 1, True),
        (f"1 MiB x {large}, 4 users", 1 << 20, large, 4, False),
    ]
    if args.only:
        scenarios = [s for s in scenarios if args.only in s[0]]
    scenarios = [s for s in scenarios for _ in range(args.repeat)]
    with tempfile.TemporaryDirectory(prefix="pop3-bench-") as tmp:
        root = Path(tmp)
        url = args.database_url or f"sqlite:///{root / 'bench.db'}"
        settings, addresses = setup(root, url, users=4)
        store = MaildirStore(settings.maildir_root, hostname="bench.test", fsync=False)
        port, procs, pids = start_workers(settings, args.workers, root, args.profile)
        floor_port, floor = start_floor(settings.maildir_root)
        print(f"POP3 download benchmark: {args.workers} worker process(es), {os.cpu_count()} CPUs")
        print(
            f"{'scenario':<33} {'msg/s':>7} {'MB/s':>6} {'srv us/msg':>10} {'sys%':>4}"
            f" {'cli us/msg':>10}"
            f" | {'floor msg/s':>11} {'srv us/msg':>10} | {'disk msg/s':>10} {'MB/s':>6}"
            f" | {'wall':>5} {'CPU':>5}"
        )
        try:
            for label, size, count, users, pipelined in scenarios:
                for address in addresses[:users]:
                    fill(store, address, count, size)
                disk = disk_read(store, addresses[:users])
                base = run_users(floor_port, addresses[:users], pipelined, [floor.pid])
                real = run_users(port, addresses[:users], pipelined, pids)
                rate, base_rate = real.messages / real.seconds, base.messages / base.seconds
                cpu, base_cpu = real.server_cpu / real.messages, base.server_cpu / base.messages
                sys_share = 100 * real.server_sys / real.server_cpu if real.server_cpu else 0
                print(
                    f"{label:<33} {rate:>7.0f} {real.octets / real.seconds / 1e6:>6.1f}"
                    f" {cpu * 1e6:>10.0f} {sys_share:>4.0f}"
                    f" {real.client_cpu / real.messages * 1e6:>10.0f}"
                    f" | {base_rate:>11.0f} {base_cpu * 1e6:>10.0f}"
                    f" | {disk[0] / disk[2]:>10.0f} {disk[1] / disk[2] / 1e6:>6.0f}"
                    f" | {rate / base_rate:>5.2f} {cpu / base_cpu if base_cpu else 0:>5.2f}",
                    flush=True,
                )
        finally:
            # Under py-spy, stop the server itself: the sampler then writes its profile.
            for pid in pids:
                os.kill(pid, signal.SIGTERM)
            floor.send_signal(signal.SIGTERM)
            for proc in [*procs, floor]:
                proc.wait(30)
    print(
        "wall = real msg/s / floor msg/s; CPU = real server CPU / floor server CPU per message"
        " (CPU from /proc in clock ticks: coarse for short scenarios)"
    )


if __name__ == "__main__":
    main()
