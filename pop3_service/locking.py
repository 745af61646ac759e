"""The POP3 maildrop lock: one session per mailbox across processes and hosts, freed when the
holder dies.

RFC 1939 section 8 asks for an exclusive-access lock on the maildrop while a session is in the
TRANSACTION state.  It must hold across worker processes (and hosts sharing the database) and
must not outlive a process that dies: a mailbox that stays ``[IN-USE]`` after a crash locks
its owner out.  Which mechanism depends on what exists (``pop3_maildrop_lock``):

* **PostgreSQL (one host or several)**: a session-level advisory lock
  ``pg_try_advisory_lock(ADVISORY_CLASS, mailbox_id)``, taken on one dedicated connection per
  worker process (not one per POP3 session, so thousands of idle clients pin one backend per
  worker).  PostgreSQL drops the locks with that connection: when the process dies its kernel
  closes the socket and the backend exits at once; when a whole host dies, TCP keepalives
  (set on that connection, about 25 s) end the backend.  Every host sharing the database sees
  the same locks.  If the lock connection itself is lost, every lock it held is reported lost
  (the sessions cannot expunge) and the next login opens a new one.
* **SQLite (one host by nature)**: a kernel file lock (``flock``) on
  ``<database file>.pop3-locks/<mailbox id>.lock``; the kernel frees it the instant the
  holding process exits, however it exits.  The lock files are never removed (removing one
  while another process opens it would let two processes lock two different files).
* **Lease rows** (``pop3_maildrop_lock = "lease"``, where nothing better exists, e.g.
  PostgreSQL behind a transaction-pooling PgBouncer, where session advisory locks do not
  work): a ``maildrop_leases`` row naming its holder and an expiry that a heartbeat pushes
  forward every third of the lease; a killed holder's lease lapses after ``lease_seconds``.
  Expiry is compared with the local clock of the host taking the lease: hosts sharing a
  database must keep their clocks in sync (NTP), which an expiry of tens of seconds tolerates.

In every mode a process also refuses a second session of its own on a mailbox (``_held``).
All methods block (database or file I/O); the server calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import secrets
import socket
import threading
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, delete, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.models import MaildropLease

DEFAULT_LEASE_SECONDS = 60.0
# The first key of our advisory locks ("POP3" in ASCII), so they cannot collide with another
# application's locks on the same database; the second key is the mailbox id.
ADVISORY_CLASS = 0x504F5033
# Server-side TCP keepalive on the lock connection: a backend whose client host vanished ends
# after idle + interval * count seconds, freeing its locks.
_KEEPALIVE = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 3}
LOCK_MODES = ("auto", "lease")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LeaseLost(Exception):
    """The lease expired and was taken over, or vanished: the session must not expunge."""


class _Exclusive(Protocol):
    """A lock the operating system or the database frees when the holding process dies."""

    def try_lock(self, mailbox_id: int) -> bool: ...

    def unlock(self, mailbox_id: int) -> None: ...

    def still_held(self, ids: list[int]) -> set[int]: ...


class FileLocks:
    """``flock`` on one file per mailbox in ``directory`` (one host: SQLite)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._fds: dict[int, int] = {}
        self._mutex = threading.Lock()

    def try_lock(self, mailbox_id: int) -> bool:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{int(mailbox_id)}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        with self._mutex:
            self._fds[mailbox_id] = fd
        return True

    def unlock(self, mailbox_id: int) -> None:
        with self._mutex:
            fd = self._fds.pop(mailbox_id, None)
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock

    def still_held(self, ids: list[int]) -> set[int]:
        with self._mutex:
            return {i for i in ids if i in self._fds}


class AdvisoryLocks:
    """PostgreSQL session advisory locks on one dedicated connection (one host or several)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None
        self._mutex = threading.Lock()

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            try:
                for name, value in _KEEPALIVE.items():
                    conn.execute(text(f"SET {name} = {int(value)}"))
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _drop(self) -> None:
        # The connection failed: whatever it held is gone with it on the server side.
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.invalidate()
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def try_lock(self, mailbox_id: int) -> bool:
        with self._mutex:
            try:
                got = self._connection().scalar(
                    text("SELECT pg_try_advisory_lock(:cls, :id)"),
                    {"cls": ADVISORY_CLASS, "id": int(mailbox_id)},
                )
            except SQLAlchemyError:
                self._drop()
                raise
            return bool(got)

    def unlock(self, mailbox_id: int) -> None:
        with self._mutex:
            if self._conn is None:
                return
            try:
                self._conn.execute(
                    text("SELECT pg_advisory_unlock(:cls, :id)"),
                    {"cls": ADVISORY_CLASS, "id": int(mailbox_id)},
                )
            except SQLAlchemyError:
                self._drop()
                raise

    def still_held(self, ids: list[int]) -> set[int]:
        with self._mutex:
            if self._conn is None:
                return set()
            try:
                rows = self._conn.scalars(
                    text(
                        "SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory'"
                        " AND pid = pg_backend_pid() AND granted AND objsubid = 2"
                        " AND classid = CAST(:cls AS oid)"
                    ),
                    {"cls": ADVISORY_CLASS},
                )
                held = {int(r) for r in rows}
            except SQLAlchemyError:
                self._drop()
                return set()
        return held & set(ids)


def _exclusive_for(factory: sessionmaker[Session], mode: str) -> _Exclusive | None:
    """The lock that dies with its process for this database, or None for lease rows."""
    if mode not in LOCK_MODES:
        raise ValueError(f"unknown POP3 maildrop lock mode {mode!r}: use one of {LOCK_MODES}")
    engine = factory.kw.get("bind")
    if mode == "lease" or not isinstance(engine, Engine):
        return None
    if engine.dialect.name == "postgresql":
        return AdvisoryLocks(engine)
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if database and database != ":memory:":
            path = Path(database).resolve()
            return FileLocks(path.with_name(path.name + ".pop3-locks"))
    return None


class MaildropLocks:
    """The maildrop locks one server process holds; one holder name for the whole process."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        holder: str | None = None,
        mode: str = "auto",
    ) -> None:
        self._factory = session_factory
        self._exclusive = _exclusive_for(session_factory, mode)
        self.lease_seconds = lease_seconds
        # Host, pid and a random part: a restarted process (same pid after a reboot, or in a
        # container) must never mistake an old lease for its own.
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
        self._held: set[int] = set()
        self._mutex = threading.Lock()

    @property
    def renew_interval(self) -> float:
        return self.lease_seconds / 3

    @property
    def held(self) -> frozenset[int]:
        with self._mutex:
            return frozenset(self._held)

    def _expiry(self, now: dt.datetime) -> dt.datetime:
        return now + dt.timedelta(seconds=self.lease_seconds)

    def acquire(self, mailbox_id: int) -> bool:
        """Take the lease for ``mailbox_id``; False when another live session holds it."""
        with self._mutex:
            if mailbox_id in self._held:  # another session of this very process
                return False
            self._held.add(mailbox_id)
        try:
            if self._exclusive is not None:
                taken = self._exclusive.try_lock(mailbox_id)
            else:
                taken = self._acquire_row(mailbox_id)
        except BaseException:
            self._forget(mailbox_id)
            raise
        if not taken:
            self._forget(mailbox_id)
        return taken

    def _acquire_row(self, mailbox_id: int) -> bool:
        now = _now()
        try:
            with transaction(self._factory) as session:
                session.add(
                    MaildropLease(
                        mailbox_id=mailbox_id,
                        holder=self.holder,
                        acquired_at=now,
                        expires_at=self._expiry(now),
                    )
                )
            return True
        except IntegrityError:
            pass  # a row exists: take it over only if it has lapsed
        with transaction(self._factory) as session:
            # One conditional UPDATE, so two processes racing for a lapsed lease cannot both
            # win: the second one's WHERE no longer matches.
            result = session.execute(
                update(MaildropLease)
                .where(MaildropLease.mailbox_id == mailbox_id, MaildropLease.expires_at < now)
                .values(holder=self.holder, acquired_at=now, expires_at=self._expiry(now))
                .execution_options(synchronize_session=False)
            )
            return bool(getattr(result, "rowcount", 0) == 1)

    def confirm(self, mailbox_id: int) -> None:
        """Renew one lease and prove it is still ours (before expunging); else LeaseLost."""
        if self._exclusive is not None:
            if mailbox_id not in self._exclusive.still_held([mailbox_id]):
                raise LeaseLost(f"maildrop lock for mailbox {mailbox_id} was lost")
            return
        now = _now()
        with transaction(self._factory) as session:
            result = session.execute(
                update(MaildropLease)
                .where(MaildropLease.mailbox_id == mailbox_id, MaildropLease.holder == self.holder)
                .values(expires_at=self._expiry(now))
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 0) != 1:
                raise LeaseLost(f"maildrop lease for mailbox {mailbox_id} was lost")

    def renew_all(self) -> set[int]:
        """Push every held lease forward; returns the mailbox ids whose lease was lost."""
        ids = sorted(self.held)
        if not ids:
            return set()
        if self._exclusive is not None:
            return set(ids) - self._exclusive.still_held(ids)
        now = _now()
        with transaction(self._factory) as session:
            session.execute(
                update(MaildropLease)
                .where(MaildropLease.holder == self.holder, MaildropLease.mailbox_id.in_(ids))
                .values(expires_at=self._expiry(now))
                .execution_options(synchronize_session=False)
            )
            still = set(
                session.scalars(
                    select(MaildropLease.mailbox_id).where(
                        MaildropLease.holder == self.holder, MaildropLease.mailbox_id.in_(ids)
                    )
                )
            )
        return set(ids) - still

    def release(self, mailbox_id: int) -> None:
        try:
            if self._exclusive is not None:
                self._exclusive.unlock(mailbox_id)
                return
            with transaction(self._factory) as session:
                session.execute(
                    delete(MaildropLease)
                    .where(
                        MaildropLease.mailbox_id == mailbox_id,
                        MaildropLease.holder == self.holder,
                    )
                    .execution_options(synchronize_session=False)
                )
        finally:
            self._forget(mailbox_id)

    def _forget(self, mailbox_id: int) -> None:
        with self._mutex:
            self._held.discard(mailbox_id)
