"""The outbound queue: enqueue, claim with a lease, record attempts, retry schedule, cleanup.

Theory of operation: a message is written to the spool first (``app.spool``), then ``enqueue``
adds one ``OutboundMessage`` and one ``OutboundRecipient`` per recipient in the caller's
transaction; only after that commit may the edge answer 250. Delivery workers call
``claim_due``, which picks due rows of state queued/deferred whose lease is free or expired
with ``SELECT ... FOR UPDATE SKIP LOCKED`` (PostgreSQL: concurrent workers on any host skip each
other's rows; SQLite ignores the clause and serialises writers, so one worker runs the same
code) and stamps them with the worker's name and a lease. A worker then records the outcome
(``record_delivered`` / ``record_deferred`` / ``record_failed``), which clears the lease; a
worker killed before that leaves the lease to expire and another worker takes the rows again
(the message may then go out twice, never zero times). The record functions return the
notices the agent must turn into delivery status notifications (RFC 3464), and the spool ids
of messages no recipient needs any more.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from app.errors import ValidationError
from app.models import (
    ORIGINS,
    RCPT_BOUNCED,
    RCPT_DEFERRED,
    RCPT_DELIVERED,
    RCPT_EXPIRED,
    RCPT_PENDING,
    RCPT_QUEUED,
    OutboundMessage,
    OutboundRecipient,
)
from app.services.addresses import MAX_LOCAL_PART, normalise_domain
from app.spool import SpoolStore

# RFC 5321 section 4.5.3.1.3: a path is at most 256 octets including the angle brackets.
MAX_PATH = 254
_BAD_LOCAL = re.compile(r"[\x00-\x20\x7f<>]")
# RFC 3463 section 3.5: 4.4.7 "delivery time expired".
STATUS_EXPIRED = "4.4.7"
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")
CLAIMABLE = (RCPT_QUEUED, RCPT_DEFERRED)


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Seconds between attempts (the last repeats) and the age after which a message expires.

    The default follows Postfix and Stalwart: about 5m, 10m, 30m, 1h, 2h, 4h, then every 4h,
    for at most 5 days.
    """

    intervals: tuple[float, ...] = (300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0)
    max_age: float = 5 * 86400.0
    delay_warning: float = 4 * 3600.0  # 0 = no delay warnings

    def delay_after(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1-based)."""
        if not self.intervals:
            raise ValueError("a retry schedule needs at least one interval")
        return self.intervals[min(max(attempts, 1), len(self.intervals)) - 1]


@dataclass(frozen=True, slots=True)
class Reply:
    """What a remote server (or the local delivery) answered."""

    code: int
    text: str
    host: str | None = None
    tls: str | None = None

    @property
    def status(self) -> str:
        """The RFC 3463 status: the enhanced code the server sent, else one from the class."""
        found = _ENHANCED.match(self.text)
        if found and found.group(1) == str(self.code)[0]:
            return found.group(0)
        return f"{str(self.code)[0]}.0.0" if 200 <= self.code < 600 else "4.0.0"


@dataclass(frozen=True, slots=True)
class Claimed:
    """A queue row handed to one worker until ``lease_until``."""

    recipient_id: int
    message_id: int
    queue_id: str
    sender: str
    address: str
    spool_id: str
    size: int
    origin: str
    attempts: int
    created_at: dt.datetime
    lease_until: dt.datetime


@dataclass(frozen=True, slots=True)
class Notice:
    """A recipient the sender must be told about: ``action`` is 'failed' or 'delayed'."""

    message_id: int
    queue_id: str
    sender: str
    spool_id: str
    created_at: dt.datetime
    address: str
    action: str
    status: str
    reply: Reply | None
    last_attempt_at: dt.datetime
    retry_until: dt.datetime | None = None


@dataclass(slots=True)
class Outcome:
    """What recording an attempt produced: DSN notices, and spool files no longer needed."""

    recorded: int = 0
    notices: list[Notice] = field(default_factory=list)
    finished_spool_ids: list[str] = field(default_factory=list)


def clean_remote_address(address: str, *, field: str = "recipient") -> str:
    """A recipient or sender address for outbound mail: the local part kept as given (RFC 5321
    section 2.4: only the destination may interpret its case), the domain in IDNA."""
    address = address.strip()
    local, at, domain = address.rpartition("@")
    if not at or not local or len(local) > MAX_LOCAL_PART or _BAD_LOCAL.search(local):
        raise ValidationError(f"invalid address {address!r}", field=field)
    result = f"{local}@{normalise_domain(domain, field=field)}"
    if len(result) > MAX_PATH:
        raise ValidationError(f"address {address!r} is too long", field=field)
    return result


def new_queue_id() -> str:
    """16 upper-case hex digits (64 random bits): unique across hosts without coordination."""
    return secrets.token_hex(8).upper()


def enqueue(
    session: Session,
    *,
    spool_id: str,
    size: int,
    sender: str,
    recipients: Sequence[str],
    origin: str,
    now: dt.datetime,
    customer_id: int | None = None,
) -> OutboundMessage:
    """Queue a spooled message for ``recipients`` (one row each, duplicates dropped).

    ``sender`` "" is the null reverse-path. The file named by ``spool_id`` must already be
    durable (``SpoolStore.write``); the caller commits, and only then says 250.
    """
    if origin not in ORIGINS:
        raise ValidationError(f"origin must be one of {', '.join(ORIGINS)}", field="origin")
    clean_sender = clean_remote_address(sender, field="sender") if sender else ""
    clean: list[str] = []
    for rcpt in recipients:
        address = clean_remote_address(rcpt)
        if address.lower() not in {c.lower() for c in clean}:
            clean.append(address)
    if not clean:
        raise ValidationError("a message needs at least one recipient", field="recipients")
    message = OutboundMessage(
        queue_id=new_queue_id(),
        sender=clean_sender,
        spool_id=spool_id,
        size=size,
        origin=origin,
        customer_id=customer_id,
        created_at=now,
    )
    message.recipients = [
        OutboundRecipient(
            address=a, state=RCPT_QUEUED, attempts=0, next_attempt_at=now, delay_warned=False
        )
        for a in clean
    ]
    session.add(message)
    session.flush()
    return message


def claim_due(
    session: Session, *, worker: str, now: dt.datetime, limit: int, lease: float
) -> list[Claimed]:
    """Take up to ``limit`` due rows for ``worker`` until ``now + lease`` seconds.

    Rows leased by a live worker are skipped (on PostgreSQL also rows another transaction is
    claiming right now: SKIP LOCKED), rows whose lease has expired are taken again.
    """
    lease_until = now + dt.timedelta(seconds=lease)
    stmt = (
        select(OutboundRecipient, OutboundMessage)
        .join(OutboundMessage, OutboundRecipient.message_id == OutboundMessage.id)
        .where(
            OutboundRecipient.state.in_(CLAIMABLE),
            OutboundRecipient.next_attempt_at <= now,
            (OutboundRecipient.lease_until.is_(None)) | (OutboundRecipient.lease_until < now),
        )
        .order_by(OutboundRecipient.next_attempt_at, OutboundRecipient.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=OutboundRecipient)
    )
    claimed: list[Claimed] = []
    for rcpt, message in session.execute(stmt).all():
        rcpt.lease_owner = worker
        rcpt.lease_until = lease_until
        claimed.append(
            Claimed(
                recipient_id=rcpt.id,
                message_id=message.id,
                queue_id=message.queue_id,
                sender=message.sender,
                address=rcpt.address,
                spool_id=message.spool_id,
                size=message.size,
                origin=message.origin,
                attempts=rcpt.attempts,
                created_at=message.created_at,
                lease_until=lease_until,
            )
        )
    session.flush()
    return claimed


def _leased_rows(
    session: Session, recipient_ids: Sequence[int], worker: str
) -> list[tuple[OutboundRecipient, OutboundMessage]]:
    """The rows still leased by ``worker`` (one whose lease another worker took over is left
    to that worker: it will deliver again, and its record wins)."""
    if not recipient_ids:
        return []
    stmt = (
        select(OutboundRecipient, OutboundMessage)
        .join(OutboundMessage, OutboundRecipient.message_id == OutboundMessage.id)
        .where(OutboundRecipient.id.in_(recipient_ids), OutboundRecipient.lease_owner == worker)
        .order_by(OutboundRecipient.id)
        .with_for_update(of=OutboundRecipient)
    )
    return [(r, m) for r, m in session.execute(stmt).all()]


def _attempted(rcpt: OutboundRecipient, now: dt.datetime, reply: Reply) -> None:
    rcpt.attempts += 1
    rcpt.last_attempt_at = now
    rcpt.last_reply_code = reply.code
    rcpt.last_reply_text = reply.text[:2000]
    rcpt.last_reply_host = None if reply.host is None else reply.host[:255]
    rcpt.last_tls = None if reply.tls is None else reply.tls[:255]
    rcpt.lease_owner = None
    rcpt.lease_until = None


def _notice(
    rcpt: OutboundRecipient,
    message: OutboundMessage,
    *,
    action: str,
    status: str,
    reply: Reply | None,
    now: dt.datetime,
    retry_until: dt.datetime | None = None,
) -> Notice:
    return Notice(
        message_id=message.id,
        queue_id=message.queue_id,
        sender=message.sender,
        spool_id=message.spool_id,
        created_at=message.created_at,
        address=rcpt.address,
        action=action,
        status=status,
        reply=reply,
        last_attempt_at=now,
        retry_until=retry_until,
    )


def _finished(session: Session, outcome: Outcome, messages: dict[int, OutboundMessage]) -> None:
    """Add the spool ids of ``messages`` that have no pending recipient left."""
    if not messages:
        return
    session.flush()
    pending = set(
        session.scalars(
            select(OutboundRecipient.message_id)
            .where(
                OutboundRecipient.message_id.in_(list(messages)),
                OutboundRecipient.state.in_(RCPT_PENDING),
            )
            .distinct()
        )
    )
    outcome.finished_spool_ids.extend(m.spool_id for i, m in messages.items() if i not in pending)


def record_delivered(
    session: Session, *, recipient_ids: Sequence[int], worker: str, now: dt.datetime, reply: Reply
) -> Outcome:
    """The recipients were accepted (250 after DATA, or stored in a local Maildir).

    The common outcome, so one set-based UPDATE ... RETURNING (row locks on PostgreSQL as
    ``_leased_rows`` takes them) instead of loading each row: bench/delivery.py spent more
    time in the ORM's per-row bookkeeping here than in sending the message."""
    outcome = Outcome()
    if not recipient_ids:
        return outcome
    rows = session.execute(
        update(OutboundRecipient)
        .where(OutboundRecipient.id.in_(recipient_ids), OutboundRecipient.lease_owner == worker)
        .values(
            state=RCPT_DELIVERED,
            attempts=OutboundRecipient.attempts + 1,
            last_attempt_at=now,
            last_reply_code=reply.code,
            last_reply_text=reply.text[:2000],
            last_reply_host=None if reply.host is None else reply.host[:255],
            last_tls=None if reply.tls is None else reply.tls[:255],
            lease_owner=None,
            lease_until=None,
        )
        .returning(OutboundRecipient.message_id)
        .execution_options(synchronize_session=False)
    ).all()
    outcome.recorded = len(rows)
    message_ids = {m for (m,) in rows}
    if message_ids:
        pending = set(
            session.scalars(
                select(OutboundRecipient.message_id)
                .where(
                    OutboundRecipient.message_id.in_(message_ids),
                    OutboundRecipient.state.in_(RCPT_PENDING),
                )
                .distinct()
            )
        )
        done = message_ids - pending
        if done:
            outcome.finished_spool_ids.extend(
                session.scalars(
                    select(OutboundMessage.spool_id).where(OutboundMessage.id.in_(done))
                )
            )
    return outcome


def record_failed(
    session: Session, *, recipient_ids: Sequence[int], worker: str, now: dt.datetime, reply: Reply
) -> Outcome:
    """A permanent failure (5xx, null MX, no such domain): bounced, the sender is told
    (unless the message came from the null sender <>, RFC 5321 section 4.5.5)."""
    outcome = Outcome()
    messages: dict[int, OutboundMessage] = {}
    for rcpt, message in _leased_rows(session, recipient_ids, worker):
        _attempted(rcpt, now, reply)
        rcpt.state = RCPT_BOUNCED
        messages[message.id] = message
        outcome.recorded += 1
        if message.sender:
            outcome.notices.append(
                _notice(rcpt, message, action="failed", status=reply.status, reply=reply, now=now)
            )
    _finished(session, outcome, messages)
    return outcome


def record_deferred(
    session: Session,
    *,
    recipient_ids: Sequence[int],
    worker: str,
    now: dt.datetime,
    reply: Reply,
    schedule: RetrySchedule,
) -> Outcome:
    """A temporary failure: retried per ``schedule``; once the message is ``max_age`` old it
    expires and bounces (status 4.4.7). The next attempt is never set after the expiry time,
    so the last try happens at the deadline. Past ``delay_warning`` the sender is warned once.
    """
    outcome = Outcome()
    messages: dict[int, OutboundMessage] = {}
    for rcpt, message in _leased_rows(session, recipient_ids, worker):
        _attempted(rcpt, now, reply)
        expires_at = message.created_at + dt.timedelta(seconds=schedule.max_age)
        messages[message.id] = message
        outcome.recorded += 1
        if now >= expires_at:
            rcpt.state = RCPT_EXPIRED
            if message.sender:
                outcome.notices.append(
                    _notice(
                        rcpt, message, action="failed", status=STATUS_EXPIRED, reply=reply, now=now
                    )
                )
            continue
        rcpt.state = RCPT_DEFERRED
        delay = dt.timedelta(seconds=schedule.delay_after(rcpt.attempts))
        rcpt.next_attempt_at = min(now + delay, expires_at)
        warn_at = message.created_at + dt.timedelta(seconds=schedule.delay_warning)
        if schedule.delay_warning > 0 and not rcpt.delay_warned and now >= warn_at:
            rcpt.delay_warned = True
            if message.sender:
                outcome.notices.append(
                    _notice(
                        rcpt,
                        message,
                        action="delayed",
                        status=reply.status,
                        reply=reply,
                        now=now,
                        retry_until=expires_at,
                    )
                )
    _finished(session, outcome, messages)
    return outcome


def postpone(
    session: Session, *, recipient_ids: Sequence[int], worker: str, until: dt.datetime
) -> int:
    """Hand rows back untried (their destination is backing off): no attempt is counted."""
    if not recipient_ids:
        return 0
    result = session.execute(
        update(OutboundRecipient)
        .where(OutboundRecipient.id.in_(recipient_ids), OutboundRecipient.lease_owner == worker)
        .values(next_attempt_at=until, lease_owner=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def clean_orphans(session: Session, *, spool: SpoolStore, grace: float) -> int:
    """Remove spool files older than ``grace`` seconds that no pending queue row needs: left by
    a crash between the spool write and the commit, by a deleted message, or by a message
    finished while its file could not be removed. Returns how many were removed."""
    candidates = spool.list_files(older_than=grace)
    spool.clean_tmp(older_than=grace)
    if not candidates:
        return 0
    ids = [c.spool_id for c in candidates]
    needed: set[str] = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        needed.update(
            session.scalars(
                select(OutboundMessage.spool_id)
                .join(OutboundRecipient, OutboundRecipient.message_id == OutboundMessage.id)
                .where(
                    OutboundMessage.spool_id.in_(chunk), OutboundRecipient.state.in_(RCPT_PENDING)
                )
                .distinct()
            )
        )
    return sum(1 for spool_id in ids if spool_id not in needed and spool.remove(spool_id))


def purge_finished(session: Session, *, before: dt.datetime) -> int:
    """Delete messages created before ``before`` whose every recipient is final."""
    pending = select(OutboundRecipient.message_id).where(OutboundRecipient.state.in_(RCPT_PENDING))
    old = select(OutboundMessage.id).where(
        OutboundMessage.created_at < before, OutboundMessage.id.not_in(pending)
    )
    ids = list(session.scalars(old))
    if not ids:
        return 0
    session.execute(delete(OutboundRecipient).where(OutboundRecipient.message_id.in_(ids)))
    session.execute(delete(OutboundMessage).where(OutboundMessage.id.in_(ids)))
    return len(ids)
