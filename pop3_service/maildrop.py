"""Login -> maildrop lock -> snapshot: the maildrop object a POP3 session works on.

As in Twisted's ``IMailbox``, the server never opens a message file itself: it asks the
maildrop to ``open(i)`` a message of the snapshot, to ``expunge(indexes)`` at QUIT and to
``release()`` the lock; each goes through ``MaildirStore``.  Every method here blocks
(database, password hashing, file system): the server calls them through
``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.errors import MailhostError, TemporaryError
from app.maildir import MailboxRef, MaildirStore, MessageInfo
from app.maildir_files import MessageReader, uid_from_name
from app.maildir_index import PackedListing
from app.services import accounts, stats, throttle
from pop3_service.locking import MaildropLocks
from pop3_service.session import AuthFailure

log = logging.getLogger("pop3_service")

# The longest plausible address (RFC 5321 section 4.5.3.1: 64 + 1 + 255).
MAX_USERNAME = 320


class SnapshotEntry:
    """One message of a login snapshot as the session sees it, made on access (its name and
    uid are decoded from the packed listing only when asked for: STAT and LIST never need
    them)."""

    __slots__ = ("_listing", "_index", "size", "crlf_source")

    def __init__(self, listing: PackedListing, index: int) -> None:
        self._listing = listing
        self._index = index
        self.size = listing.wires[index]  # octets with CRLF line endings (RFC 1939 section 11)
        self.crlf_source = listing.foreign(index)  # foreign: its line endings may be CRLF

    @property
    def name(self) -> str:
        return self._listing.name(self._index)

    @property
    def uid(self) -> str:
        return uid_from_name(self.name)


class Snapshot(Sequence[SnapshotEntry]):
    """The messages fixed at login, kept packed (``PackedListing``): no object per message
    stays alive, so a session on 50,000 messages holds a few MB and gives them back at
    logout (one bytes object of names and a few arrays)."""

    __slots__ = ("maildir", "listing")

    def __init__(self, maildir: Path, listing: PackedListing) -> None:
        self.maildir = maildir
        self.listing = listing

    def __len__(self) -> int:
        return len(self.listing)

    @overload
    def __getitem__(self, index: int) -> SnapshotEntry: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[SnapshotEntry]: ...

    def __getitem__(self, index: int | slice) -> SnapshotEntry | Sequence[SnapshotEntry]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        listing = self.listing
        if index < 0:
            index += len(listing)
        if not 0 <= index < len(listing):
            raise IndexError(index)
        return SnapshotEntry(listing, index)

    def __iter__(self) -> Iterator[SnapshotEntry]:
        for i in range(len(self.listing)):
            yield self[i]

    def info(self, index: int) -> MessageInfo:
        """Where message ``index`` lives, for the store."""
        listing = self.listing
        return MessageInfo(
            uid=uid_from_name(listing.name(index)),
            path=listing.path(self.maildir, index),
            size=listing.sizes[index],
            wire_size=None if listing.foreign(index) else listing.wires[index],
            mtime=listing.mtimes[index],
        )


@dataclass(slots=True)
class MaildirMaildrop:
    """The locked maildrop handed to the session after login (the session reads ``messages``)."""

    mailbox_id: int
    ref: MailboxRef
    messages: Snapshot
    _store: MaildirStore = field(repr=False)
    _locks: MaildropLocks = field(repr=False)
    _released: bool = False

    def open(self, index: int) -> MessageReader:
        """Open message ``index`` (0-based) of the snapshot; FileNotFoundError if gone."""
        return self._store.open_reader(self.messages.info(index))

    def total_octets(self) -> int:
        """Sum of the snapshot's wire sizes, from the array (no object per message: 50,000
        entries made and summed one by one took 24 ms of the event loop at login)."""
        return sum(self.messages.listing.wires)

    def read_whole(self, index: int) -> bytes:
        """The contents of message ``index`` in one read (small messages); FileNotFoundError
        if gone."""
        return self._store.read_listed(self.messages.maildir, self.messages.listing, index)

    def expunge(self, indexes: Sequence[int]) -> int:
        """Remove these messages (0-based snapshot indexes) if the lock is still ours (else
        LeaseLost); how many went."""
        # Still ours?  A session whose lock lapsed must not delete (another may be live).
        self._locks.confirm(self.mailbox_id)
        return self._store.expunge(self.ref, [self.messages.info(i) for i in indexes])

    def release(self) -> None:
        """Give the lock back (once; later calls do nothing)."""
        if self._released:
            return
        self._released = True
        self._locks.release(self.mailbox_id)


def _plausible(text: str, *, limit: int) -> bool:
    """False for strings no mailbox login can contain (control characters, broken UTF-8)."""
    if not text or len(text) > limit:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # surrogate-escaped bytes that were not UTF-8
        return False
    return not any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


class Maildrops:
    """Opens maildrops: checks credentials, takes the lock, snapshots the Maildir."""

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        store: MaildirStore,
        locks: MaildropLocks,
        throttle_policy: throttle.ThrottlePolicy,
    ) -> None:
        self._factory = session_factory
        self._store = store
        self.locks = locks
        self.throttle_policy = throttle_policy

    def reserve(self, *, peer_ip: str, username: str) -> throttle.Ticket | throttle.Refused:
        """Reserve one password check (committed, so parallel guesses count while in flight);
        over budget, refused at once (the one place the throttle is asked)."""
        with transaction(self._factory) as db:
            return throttle.reserve(
                db, door="pop3", address=peer_ip, account=username, policy=self.throttle_policy
            )

    def _settle_unchecked(self, ticket: throttle.Ticket) -> None:
        # The server failed, not the client: give the charge back (if the database is down
        # too, the charge drains like a failure; see app/services/throttle.py).
        try:
            with transaction(self._factory) as db:
                throttle.settle(
                    db,
                    ticket=ticket,
                    outcome=throttle.Outcome.UNCHECKED,
                    policy=self.throttle_policy,
                )
        except (TemporaryError, SQLAlchemyError):
            log.exception("returning a POP3 login throttle charge failed")

    def count_login(self) -> None:
        with transaction(self._factory) as db:
            stats.bump(db, metric="pop3_logins")

    def login(
        self, *, username: str, password: str, ticket: throttle.Ticket
    ) -> MaildirMaildrop | AuthFailure:
        """The locked, snapshotted maildrop, or why not (``ticket`` from :meth:`reserve`)."""
        found: tuple[int, MailboxRef] | None = None
        if _plausible(username, limit=MAX_USERNAME) and _plausible(password, limit=1024):
            try:
                with transaction(self._factory) as db:
                    mailbox = accounts.authenticate_mailbox(
                        db,
                        address=username.strip(),
                        password=password,
                        door=accounts.DOOR_POP3,
                    )
                    if mailbox is not None:
                        found = (mailbox.id, MailboxRef.of(mailbox))
                        throttle.settle(
                            db,
                            ticket=ticket,
                            outcome=throttle.Outcome.SUCCESS,
                            policy=self.throttle_policy,
                        )
            except (TemporaryError, SQLAlchemyError):
                self._settle_unchecked(ticket)  # no verdict reached: not a guess
                raise
            except MailhostError:  # e.g. ValidationError on a malformed address
                found = None
        if found is None:
            # The charge taken by reserve() is the failure: nothing more to write.
            return AuthFailure.BAD_CREDENTIALS
        mailbox_id, ref = found
        if not self.locks.acquire(mailbox_id):
            return AuthFailure.IN_USE
        try:
            # Sizes come from the index (counted once for foreign files), so login costs
            # the same for 10 messages and for 50,000 (app/maildir_index.py).
            messages = Snapshot(*self._store.packed_listing(ref))
        except BaseException:
            self.locks.release(mailbox_id)
            raise
        return MaildirMaildrop(
            mailbox_id=mailbox_id,
            ref=ref,
            messages=messages,
            _store=self._store,
            _locks=self.locks,
        )
