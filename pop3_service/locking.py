"""The POP3 maildrop lock: a lease row per mailbox, shared by every process and host.

RFC 1939 section 8 asks for an exclusive-access lock on the maildrop while a session is in the
TRANSACTION state.  It must hold across worker processes and across hosts sharing the database,
and must not outlive a process that dies, so it is a *lease*: a ``maildrop_leases`` row naming
its holder and an expiry that a heartbeat pushes forward every third of the lease.  A process
that is SIGKILLed stops renewing and its leases lapse after at most ``lease_seconds``.

Why lease rows rather than PostgreSQL session-level advisory locks: an advisory lock lives as
long as the database *connection* that took it, so every open POP3 session would pin one
connection (thousands of idle clients = thousands of PostgreSQL backends), and SQLite would need
a second mechanism anyway.  A lease row costs one short transaction per login, one batched
UPDATE per process per renewal period and one DELETE at logout, on both backends alike.

Expiry is compared with the local clock of the host taking the lease: hosts sharing a database
must keep their clocks in sync (NTP), which an expiry of tens of seconds tolerates easily.

All methods block (database I/O); the server calls them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import socket
import threading

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.models import MaildropLease

DEFAULT_LEASE_SECONDS = 60.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LeaseLost(Exception):
    """The lease expired and was taken over, or vanished: the session must not expunge."""


class MaildropLocks:
    """The leases one server process holds; one holder name for the whole process."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        holder: str | None = None,
    ) -> None:
        self._factory = session_factory
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
