"""Two POP3 worker processes on one port, one database, one Maildir root: the maildrop lock
holds across processes and is released within seconds when the holder is SIGKILLed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MaildirStore
from app.readiness import parse_ready_line
from pop3_service.locking import ADVISORY_CLASS, LeaseLost, MaildropLocks
from tests.factories import DEFAULT_PASSWORD, seed_mailbox
from tests.protocol.pop3_helpers import RawClient, deliver, in_ci, ref

ALICE = "alice@a.example"
# Long, so a login that succeeds soon after SIGKILL proves the lock died with its holder
# rather than lapsing.
LEASE_SECONDS = 60.0
# "Within a few seconds of the holder's death" (Dovecot frees it as soon as the process goes).
RELEASE_BOUND = 5.0
REPO = Path(__file__).resolve().parents[2]


def _shared_port() -> socket.socket:
    """A port reserved with SO_REUSEPORT (bound, never listening) for the workers to share."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class Worker:
    def __init__(self, settings: Settings, port: int, name: str, cwd: Path) -> None:
        env = {
            **os.environ,
            "MAILHOST_DATABASE_URL": settings.database_url,
            "MAILHOST_MAILDIR_ROOT": str(settings.maildir_root),
            "MAILHOST_HOSTNAME": name,
            "MAILHOST_POP3_HOST": "127.0.0.1",
            "MAILHOST_POP3_PORT": str(port),
            "MAILHOST_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO),
        }
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pop3_service", "--lease-seconds", str(LEASE_SECONDS)],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        ready: list[bytes] = []
        reader = threading.Thread(target=lambda: ready.append(self.proc.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(30)
        parsed = parse_ready_line(ready[0].decode(errors="replace")) if ready else None
        if parsed is None or parsed.service != "pop3":
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            raise RuntimeError(f"worker {name} did not start: {err.decode(errors='replace')}")
        assert parsed.port("pop3") == port
        assert parsed.pid == self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[tuple[int, dict[str, Worker]]]:
    reserved = _shared_port()
    port = reserved.getsockname()[1]
    started: dict[str, Worker] = {}
    try:
        for name in ("worker-a.test", "worker-b.test"):
            started[name] = Worker(settings, port, name, tmp_path)
        reserved.close()
        yield port, started
    finally:
        reserved.close()
        for worker in started.values():
            worker.stop()


def _connect_to(port: int, name: str) -> RawClient:
    """A connection greeted by the worker ``name`` (the kernel spreads connections)."""
    for _ in range(200):
        client = RawClient(port)
        if name.encode() in client.greeting:
            return client
        client.close()
    raise AssertionError(f"no connection reached {name}")


def _worker_of(client: RawClient, workers: dict[str, Worker]) -> str:
    return next(name for name in workers if name.encode() in client.greeting)


def test_second_session_refused_across_processes_and_released_on_sigkill(
    workers: tuple[int, dict[str, Worker]],
    session_factory: sessionmaker[Session],
    store: MaildirStore,
) -> None:
    port, procs = workers
    seed_mailbox(session_factory, ALICE)
    deliver(store, ALICE, b"Subject: keep me\n\nbody\n")

    first = RawClient(port)
    holder = _worker_of(first, procs)
    other = next(name for name in procs if name != holder)
    assert first.login(ALICE, DEFAULT_PASSWORD).startswith(b"+OK Logged in")
    assert first.cmd("DELE 1") == b"+OK Message 1 deleted"

    # The same mailbox through the OTHER process: refused by the shared lease.
    second = _connect_to(port, other)
    assert second.login(ALICE, DEFAULT_PASSWORD) == (
        b"-ERR [IN-USE] Maildrop is locked by another session, try again later"
    )
    second.close()

    # SIGKILL the holder: no cleanup runs in it; its lock must go with the process (kernel
    # file lock on SQLite, advisory lock on PostgreSQL), well before the lease would lapse.
    procs[holder].proc.send_signal(signal.SIGKILL)
    procs[holder].proc.wait(10)
    killed_at = time.monotonic()
    deadline = killed_at + RELEASE_BOUND
    replies: list[bytes] = []
    while time.monotonic() < deadline:
        client = RawClient(port)  # only the survivor is left on the port
        assert other.encode() in client.greeting
        reply = client.login(ALICE, DEFAULT_PASSWORD)
        replies.append(reply)
        if reply.startswith(b"+OK"):
            break
        client.close()
        time.sleep(0.2)
    assert replies[-1] == b"+OK Logged in, maildrop has 1 messages (26 octets)", replies
    assert time.monotonic() - killed_at < RELEASE_BOUND < LEASE_SECONDS
    # The killed session's DELE was never applied.
    assert client.cmd("QUIT").startswith(b"+OK")
    assert len(store.list_messages(ref(ALICE))) == 1


def _tmp_debris(store: MaildirStore) -> tuple[Path, Path]:
    """A stale tmp file (two days old, crash debris) and a fresh one (a delivery in progress)."""
    tmp = store.ensure(ref(ALICE)) / "tmp"
    stale, fresh = tmp / "1700000000.M1P1Q1.dead", tmp / "1700000001.M1P1Q2.live"
    stale.write_bytes(b"Subject: half written\n")
    fresh.write_bytes(b"Subject: being written\n")
    old = time.time() - 2 * 86400
    os.utime(stale, (old, old))
    return stale, fresh


def test_a_worker_start_cleans_stale_tmp_files_only(
    settings: Settings, store: MaildirStore, tmp_path: Path
) -> None:
    stale, fresh = _tmp_debris(store)
    reserved = _shared_port()
    try:
        worker = Worker(settings, reserved.getsockname()[1], "worker-a.test", tmp_path)
    finally:
        reserved.close()
    try:
        assert not stale.exists()
        assert fresh.exists()
    finally:
        worker.stop()


def test_a_replacement_prefork_worker_cleans_stale_tmp_files(
    settings: Settings, store: MaildirStore, tmp_path: Path
) -> None:
    """``mailhost pop3 --workers 2``: after a worker is SIGKILLed, its replacement cleans."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOST_")}
    env.update(
        MAILHOST_DATABASE_URL=settings.database_url,
        MAILHOST_MAILDIR_ROOT=str(settings.maildir_root),
        MAILHOST_HOSTNAME="mx.test.example",
        MAILHOST_POP3_PORT="0",
        MAILHOST_LOG_LEVEL="INFO",
        PYTHONPATH=str(REPO),
    )
    stderr = tmp_path / "pop3.err"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailhost", "pop3", "--workers", "2"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=tmp_path,
            env=env,
        )

    def wait_for(predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 60
        while not predicate():
            assert proc.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, (
                f"timed out waiting for {what}: {stderr.read_text()}"
            )
            time.sleep(0.1)

    def ready() -> int:
        return sum(line.startswith("ready pop3 ") for line in stderr.read_text().splitlines())

    try:
        wait_for(lambda: ready() >= 2, "two workers")
        stale, fresh = _tmp_debris(store)  # left by a delivery killed after the workers began
        pids = [
            int(line.rsplit("pid ", 1)[1].rstrip(")"))
            for line in stderr.read_text().splitlines()
            if "started pop3 worker" in line
        ]
        os.kill(pids[0], signal.SIGKILL)
        wait_for(lambda: ready() >= 3, "the replacement worker")
        assert not stale.exists(), stderr.read_text()
        assert fresh.exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@pytest.mark.postgres
def test_advisory_locks_are_lost_with_their_connection_and_can_be_taken_again(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    """PostgreSQL: the lock lives on the worker's lock connection; when that backend ends
    (host gone, keepalive expired, or terminated) the lock is reported lost, so the session
    cannot expunge, and another worker can take it at once."""
    if not settings.database_url.startswith("postgresql"):
        if in_ci():
            pytest.fail("CI must run this against PostgreSQL: set MAILHOST_TEST_DATABASE_URL")
        pytest.skip("PostgreSQL variant: set MAILHOST_TEST_DATABASE_URL")
    mailbox_id = seed_mailbox(session_factory, ALICE)
    holder = MaildropLocks(session_factory)
    rival = MaildropLocks(session_factory)
    assert holder.acquire(mailbox_id)
    assert not rival.acquire(mailbox_id)
    holder.confirm(mailbox_id)  # still ours
    with transaction(session_factory) as db:
        terminated = db.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                " AND classid = CAST(:cls AS oid) AND objid = CAST(:id AS oid)"
            ),
            {"cls": ADVISORY_CLASS, "id": mailbox_id},
        ).all()
    assert terminated == [(True,)]
    deadline = time.monotonic() + RELEASE_BOUND
    while not rival.acquire(mailbox_id):
        assert time.monotonic() < deadline, "the lock outlived its connection"
        time.sleep(0.05)
    with pytest.raises(LeaseLost):
        holder.confirm(mailbox_id)
    assert holder.renew_all() == {mailbox_id}
    holder.release(mailbox_id)
    rival.release(mailbox_id)
    assert holder.acquire(mailbox_id)  # a new lock connection
    holder.release(mailbox_id)
