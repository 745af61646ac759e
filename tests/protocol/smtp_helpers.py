"""SMTP test helpers: an ingress running in a background thread, a raw-socket client, the
standard set of hosted addresses, and Maildir inspection."""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MailboxRef, MaildirStore
from app.passwords import hash_password
from app.readiness import parse_ready_line
from app.services import domains, mailboxes
from app.services.audit import CLI_ACTOR
from smtp_ingress.server import SmtpIngress
from tests.factories import make_alias, make_domain, make_mailbox

TIMEOUT = 10.0


@functools.lru_cache(maxsize=1)
def _password_hash() -> str:
    # Hash once per run: argon2 per mailbox would make seeding slow.
    return hash_password("correct horse")


class IngressThread:
    """A real ``SmtpIngress`` on port 0, serving from its own event loop thread."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        store: MaildirStore,
        **kw: Any,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.settings = settings
        self.ingress: SmtpIngress | None = None
        self._args = (settings, session_factory, store, kw)

    def _run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> IngressThread:
        self.thread.start()
        settings, session_factory, store, kw = self._args

        async def make() -> SmtpIngress:
            ingress = SmtpIngress(settings, session_factory=session_factory, store=store, **kw)
            await ingress.start()
            return ingress

        self.ingress = self._run(make())
        return self

    @property
    def port(self) -> int:
        assert self.ingress is not None
        return self.ingress.port

    def connections(self) -> int:
        assert self.ingress is not None

        async def count() -> int:
            assert self.ingress is not None
            return self.ingress.connections

        return int(self._run(count()))

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        if self.ingress is not None:
            self._run(self.ingress.stop(), timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class RawClient:
    """A line-level SMTP client over a plain socket (every read has a timeout)."""

    def __init__(self, port: int, *, read_greeting: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply() if read_greeting else ""

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode() + b"\r\n"
        self.sock.sendall(data)

    def reply(self) -> str:
        """One whole reply (multi-line replies joined by newlines); '' on EOF."""
        lines: list[str] = []
        while True:
            raw = self.file.readline()
            if not raw:
                return "\n".join(lines)
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return "\n".join(lines)

    def cmd(self, data: bytes | str) -> str:
        self.send(data)
        return self.reply()

    def closed_by_server(self) -> bool:
        try:
            return self.file.readline() == b""
        except (ConnectionResetError, OSError):
            return True

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass


HOSTED = "hosted.example"
EMPTY_DOMAIN = "empty.example"
ADDRESSES = {
    "user": "user@hosted.example",
    "other": "other@hosted.example",
    "team": "team@hosted.example",  # alias -> user, other
    "suspended": "frozen@hosted.example",
    "full": "full@hosted.example",  # 1 KiB quota, already full
    "catchall_box": "bucket@catchall.example",  # catch-all of catchall.example
    "closed_domain_user": "someone@closed.example",  # domain suspended
}


def seed_world(session_factory: sessionmaker[Session], store: MaildirStore) -> None:
    """The hosted addresses every SMTP test uses (committed)."""
    pw = _password_hash()
    with transaction(session_factory) as s:
        make_mailbox(s, ADDRESSES["user"], password_hash=pw)
        make_mailbox(s, ADDRESSES["other"], password_hash=pw)
        make_alias(s, ADDRESSES["team"], [ADDRESSES["user"], ADDRESSES["other"]])
        frozen = make_mailbox(s, ADDRESSES["suspended"], password_hash=pw)
        mailboxes.set_mailbox_status(s, actor=CLI_ACTOR, mailbox_id=frozen.id, status="suspended")
        make_mailbox(s, ADDRESSES["full"], password_hash=pw, quota=1024)
        make_mailbox(s, ADDRESSES["catchall_box"], password_hash=pw)
        catchall = domains.get_domain_by_name(s, name="catchall.example")
        domains.set_catchall(
            s, actor=CLI_ACTOR, domain_id=catchall.id, target=ADDRESSES["catchall_box"]
        )
        hosted = domains.get_domain_by_name(s, name=HOSTED)
        domains.add_domain_alias(
            s, actor=CLI_ACTOR, domain_id=hosted.id, alias_name="alias.example"
        )
        closed = make_domain(s, "closed.example")
        make_mailbox(s, ADDRESSES["closed_domain_user"], password_hash=pw)
        domains.set_domain_status(s, actor=CLI_ACTOR, domain_id=closed.id, status="suspended")
        make_domain(s, EMPTY_DOMAIN)  # hosted, no mailbox, no catch-all
    store.deliver([(ref(ADDRESSES["full"]), [b"Subject: filler\n\n" + b"x" * 2048 + b"\n"])])


def add_mailbox(session_factory: sessionmaker[Session], address: str) -> int:
    """Create a mailbox in its own committed transaction; returns its id."""
    with transaction(session_factory) as s:
        return make_mailbox(s, address, password_hash=_password_hash()).id


def remove_mailbox(
    session_factory: sessionmaker[Session], store: MaildirStore, address: str
) -> None:
    """What ``mailhost mailbox remove`` does: delete the row in a committed transaction, then
    the Maildir (after the commit)."""
    with transaction(session_factory) as s:
        mailbox = mailboxes.get_mailbox_by_address(s, address=address)
        mailboxes.delete_mailbox(s, actor=CLI_ACTOR, mailbox_id=mailbox.id)
    store.remove_mailbox(ref(address))


def ref(address: str) -> MailboxRef:
    local, domain = address.split("@")
    return MailboxRef(domain=domain, local_part=local)


def new_messages(store: MaildirStore, address: str) -> list[bytes]:
    """Contents of the messages in ``new/`` of ``address``, oldest first."""
    path = store.mailbox_path(ref(address)) / "new"
    if not path.exists():
        return []
    return [p.read_bytes() for p in sorted(path.iterdir(), key=lambda p: p.name)]


def all_message_files(root: Path) -> list[Path]:
    """Every file in any new/, cur/ or tmp/ under the Maildir root."""
    return sorted(p for p in root.glob("*/*/*/*") if p.is_file())


REPO = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """``python -m smtp_ingress`` in a subprocess, configured through the environment."""

    def __init__(self, settings: Settings, *, port: int, cwd: Path) -> None:
        import os
        import subprocess
        import sys

        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "MAILHOST_DATABASE_URL": settings.database_url,
            "MAILHOST_MAILDIR_ROOT": str(settings.maildir_root),
            "MAILHOST_HOSTNAME": settings.hostname,
            "MAILHOST_SMTP_HOST": "127.0.0.1",
            "MAILHOST_SMTP_PORT": str(port),
            "MAILHOST_SMTP_GREET_DELAY": "0",
            "MAILHOST_LOG_LEVEL": "WARNING",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smtp_ingress"],
            cwd=cwd,  # not the repo: no stray .env is read
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "ready smtp pid=... smtp=..." (or EOF on failure)
        ready = parse_ready_line(line)
        if ready is None or ready.service != "smtp":
            self.proc.kill()
            raise RuntimeError(f"worker did not start: {line!r}")
        self.pid = ready.pid
        self.port = ready.port("smtp")

    def kill(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except Exception:
                self.proc.kill()
                self.proc.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
