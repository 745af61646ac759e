"""Who may send as whom, and how much: the submission policy.

Theory of operation
-------------------
The submission edge asks three questions of an authenticated mailbox:

* :func:`may_send_as`: is this envelope (or ``From:``) address one that delivers to the
  mailbox? Its own address, an alias whose targets include it (chains followed as the MX
  resolves them, :mod:`app.services.resolution`), and either of those under an alias domain.
  A domain's catch-all and the postmaster fallback do NOT count: they take mail for addresses
  nobody was given, and letting the catch-all's owner send as any invented address of the
  domain (or the oldest mailbox as ``postmaster@``) would hand out identities by accident.
  Whoever should send as ``postmaster@`` gets an alias or mailbox of that name. The null
  sender and anything unparsable are False.
* :func:`check_sending` (at MAIL FROM): may it send at all (``may_send`` on, the mailbox, its
  domain and its customer active) and would one more message pass a limit? Reads only,
  counts nothing; the :class:`SendingSnapshot` it returns checks each RCPT in memory (no
  database round trip per recipient; an early refusal only, as the MAIL check is).
* :func:`consume_sending` (at the end of DATA, in the transaction that commits the queue rows
  before the 250): the same check and the count, atomically.

Limits and windows
------------------
Two metrics, each for the mailbox and for its customer (all the customer's mailboxes
together): messages per hour and recipients per day. A limit column left NULL inherits the
platform default (:class:`SendingLimits`, from ``Settings.send_*``). A message counts every
recipient, hosted or remote: a stolen password spamming the ISP's own users is still spam.

Windows are FIXED and aligned to the UTC clock: the clock hour for messages, the UTC day for
recipients. Fixed, not sliding, because the count then lives in one row per mailbox (or
customer) and metric that a conditional check under a row lock keeps exact on every backend
and host, the figure the portal shows ("37 of 200 this hour") is the figure the limit uses,
and the refusal can say exactly when sending works again. The price is the boundary: a
mailbox may send its hourly limit at 14:59 and again at 15:00, at most twice the limit in a
short span; for a limit whose job is to stop a stolen password from sending thousands of
messages, that is acceptable, and the "sending limited" flag still shows the first refusal.
Rows never pile up (one per mailbox or customer and metric); rows of windows that ended more
than two days ago (idle or deleted mailboxes) are pruned when a mailbox opens a new hour.

Exactness: :func:`consume_sending` first inserts any missing counter rows (``INSERT ... ON
CONFLICT DO NOTHING``; on SQLite that first write takes the database's write lock, which
serialises all writers across processes), then reads the four rows ``SELECT ... FOR UPDATE``
in primary-key order (PostgreSQL row locks, one order everywhere, so two senders never wait
for each other in a cycle), checks every limit, and only then adds. Nothing is counted when
any limit refuses, and the locks are held until the caller commits with its queue rows.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import NotFoundError, SendingDisabled, SendLimitExceeded, ValidationError
from app.models import (
    SEND_METRIC_MESSAGES,
    SEND_METRIC_RECIPIENTS,
    SEND_SCOPE_CUSTOMER,
    SEND_SCOPE_MAILBOX,
    STATUS_ACTIVE,
    Alias,
    Customer,
    Domain,
    DomainAlias,
    Mailbox,
    SendingCounter,
)
from app.services.addresses import split_address
from app.services.audit import SYSTEM_ACTOR, audit
from app.services.resolution import resolve_recipient

HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)
# Counter rows whose window ended longer ago than this are deleted (they count zero anyway).
PRUNE_AFTER = dt.timedelta(days=2)


@dataclass(frozen=True, slots=True)
class SendingLimits:
    """The platform defaults a NULL limit column inherits (see Settings.send_*)."""

    mailbox_messages_per_hour: int = 200
    mailbox_recipients_per_day: int = 1000
    customer_messages_per_hour: int = 2000
    customer_recipients_per_day: int = 10000

    @classmethod
    def from_settings(cls, settings: Settings) -> SendingLimits:
        return cls(
            mailbox_messages_per_hour=settings.send_mailbox_messages_per_hour,
            mailbox_recipients_per_day=settings.send_mailbox_recipients_per_day,
            customer_messages_per_hour=settings.send_customer_messages_per_hour,
            customer_recipients_per_day=settings.send_customer_recipients_per_day,
        )


DEFAULT_LIMITS = SendingLimits()


# ------------------------------------------------------------------------------ sender policy
def may_send_as(session: Session, *, mailbox_id: int, address: str) -> bool:
    """True when ``address`` delivers to this mailbox (see the module docstring): its own
    address, an alias (chain) including it, either under an alias domain; case-insensitive
    as the MX resolves. Catch-alls and the postmaster fallback never count."""
    try:
        local, domain_name = split_address(address)
    except ValidationError:
        return False
    domain_id = session.scalar(select(Domain.id).where(Domain.name == domain_name))
    if domain_id is None:
        domain_id = session.scalar(
            select(DomainAlias.target_domain_id).where(DomainAlias.name == domain_name)
        )
    if domain_id is None:
        return False
    # Only an address somebody was given: a mailbox or an alias of that exact name.
    explicit = session.scalar(
        select(Mailbox.id)
        .where(Mailbox.domain_id == domain_id, Mailbox.local_part == local)
        .union_all(select(Alias.id).where(Alias.domain_id == domain_id, Alias.local_part == local))
        .limit(1)
    )
    if explicit is None:
        return False
    result = resolve_recipient(session, address=f"{local}@{domain_name}")
    return result.ok and any(target.mailbox_id == mailbox_id for target in result.targets)


# ------------------------------------------------------------------------------ limits
@dataclass(frozen=True, slots=True)
class _Sender:
    mailbox_id: int
    address: str
    customer_id: int
    customer_name: str
    mailbox_messages: int
    mailbox_recipients: int
    customer_messages: int
    customer_recipients: int


def _sender(session: Session, mailbox_id: int, limits: SendingLimits) -> _Sender:
    """The mailbox's limits (inherited where NULL); SendingDisabled when it may not send."""
    row = session.execute(
        select(
            Mailbox.local_part,
            Mailbox.status,
            Mailbox.may_send,
            Mailbox.max_messages_per_hour,
            Mailbox.max_recipients_per_day,
            Domain.name,
            Domain.status,
            Customer.id,
            Customer.name,
            Customer.status,
            Customer.max_messages_per_hour,
            Customer.max_recipients_per_day,
        )
        .join(Domain, Mailbox.domain_id == Domain.id)
        .join(Customer, Domain.customer_id == Customer.id)
        .where(Mailbox.id == mailbox_id)
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"mailbox {mailbox_id} does not exist", field="mailbox_id")
    (local, status, may_send, mb_msgs, mb_rcpts, domain, domain_status) = row[:7]
    (customer_id, customer_name, customer_status, cu_msgs, cu_rcpts) = row[7:]
    address = f"{local}@{domain}"
    if status != STATUS_ACTIVE:
        raise SendingDisabled(f"mailbox {address} is suspended")
    if domain_status != STATUS_ACTIVE:
        raise SendingDisabled(f"domain {domain} is suspended")
    if customer_status != STATUS_ACTIVE:
        raise SendingDisabled(f"the customer account of {address} is suspended")
    if not may_send:
        raise SendingDisabled(f"mailbox {address} is not allowed to send mail")
    return _Sender(
        mailbox_id=mailbox_id,
        address=address,
        customer_id=customer_id,
        customer_name=customer_name,
        mailbox_messages=limits.mailbox_messages_per_hour if mb_msgs is None else mb_msgs,
        mailbox_recipients=limits.mailbox_recipients_per_day if mb_rcpts is None else mb_rcpts,
        customer_messages=limits.customer_messages_per_hour if cu_msgs is None else cu_msgs,
        customer_recipients=limits.customer_recipients_per_day if cu_rcpts is None else cu_rcpts,
    )


def window_start(metric: str, now: dt.datetime) -> dt.datetime:
    """Start of the fixed window of ``metric`` holding ``now``: the UTC hour or day."""
    moment = now.astimezone(dt.UTC)
    if metric == SEND_METRIC_MESSAGES:
        return moment.replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def window_end(metric: str, now: dt.datetime) -> dt.datetime:
    return window_start(metric, now) + (HOUR if metric == SEND_METRIC_MESSAGES else DAY)


def current_count(row_start: dt.datetime | None, count: int, metric: str, now: dt.datetime) -> int:
    """What a counter row counts at ``now``: zero once its window has passed. A row ahead of
    our window (another host's clock is ahead) still counts: never fewer than were sent."""
    if row_start is None or row_start < window_start(metric, now):
        return 0
    return count


# (scope, metric) of the four counters, in primary-key order (the lock order).
_KEYS = (
    (SEND_SCOPE_CUSTOMER, SEND_METRIC_MESSAGES),
    (SEND_SCOPE_CUSTOMER, SEND_METRIC_RECIPIENTS),
    (SEND_SCOPE_MAILBOX, SEND_METRIC_MESSAGES),
    (SEND_SCOPE_MAILBOX, SEND_METRIC_RECIPIENTS),
)


def _key_ids(sender: _Sender) -> list[tuple[str, int, str]]:
    return [
        (scope, sender.customer_id if scope == SEND_SCOPE_CUSTOMER else sender.mailbox_id, metric)
        for scope, metric in _KEYS
    ]


def _verdict(
    sender: _Sender, counts: dict[tuple[str, str], int], *, recipients: int, now: dt.datetime
) -> SendLimitExceeded | None:
    """The first limit one more message with ``recipients`` recipients would pass. The
    mailbox's own limits are checked first: when both are spent, that is the one to name."""
    checks = (
        (SEND_SCOPE_MAILBOX, SEND_METRIC_MESSAGES, sender.mailbox_messages, 1),
        (SEND_SCOPE_MAILBOX, SEND_METRIC_RECIPIENTS, sender.mailbox_recipients, recipients),
        (SEND_SCOPE_CUSTOMER, SEND_METRIC_MESSAGES, sender.customer_messages, 1),
        (SEND_SCOPE_CUSTOMER, SEND_METRIC_RECIPIENTS, sender.customer_recipients, recipients),
    )
    for scope, metric, limit, adding in checks:
        count = counts.get((scope, metric), 0)
        if count + adding > limit:
            return _exceeded(
                sender, scope, metric, count=count, limit=limit, adding=adding, now=now
            )
    return None


def _exceeded(
    sender: _Sender,
    scope: str,
    metric: str,
    *,
    count: int,
    limit: int,
    adding: int,
    now: dt.datetime,
) -> SendLimitExceeded:
    # ASCII only (it becomes an SMTP reply): the address is IDNA, the customer's name is not
    # named (the user knows whose account it is).
    who = (
        f"mailbox {sender.address}"
        if scope == SEND_SCOPE_MAILBOX
        else (f"the customer account of {sender.address}")
    )
    retry_at = window_end(metric, now)
    if metric == SEND_METRIC_MESSAGES:
        text = (
            f"{who} sent {count} messages this hour (limit {limit} per hour); "
            f"try again after {retry_at:%H:%M} UTC"
        )
    else:
        text = (
            f"{who} sent to {count} recipients today, {adding} more would pass the limit "
            f"of {limit} per day; try again after {retry_at:%Y-%m-%d %H:%M} UTC"
        )
    return SendLimitExceeded(
        text,
        scope=scope,
        metric=metric,
        name=sender.address if scope == SEND_SCOPE_MAILBOX else sender.customer_name,
        count=count,
        limit=limit,
        retry_at=retry_at,
    )


@dataclass(frozen=True, slots=True)
class SendingSnapshot:
    """The mailbox's limits and its counters as read at one moment (MAIL FROM): lets each RCPT
    be checked without another database round trip. Only an early refusal: the count that
    keeps the limits exact is :func:`consume_sending`, which reads the rows again under lock."""

    sender: _Sender
    counts: dict[tuple[str, str], int]

    def check(self, *, recipients: int, now: dt.datetime) -> None:
        """SendLimitExceeded when one more message with ``recipients`` recipients would pass
        a limit by these counts."""
        if recipients < 0:
            raise ValidationError("recipients must not be negative", field="recipients")
        error = _verdict(self.sender, self.counts, recipients=recipients, now=now)
        if error is not None:
            raise error


def sending_snapshot(
    session: Session, *, mailbox_id: int, now: dt.datetime, limits: SendingLimits = DEFAULT_LIMITS
) -> SendingSnapshot:
    """Read the limits and counters (SendingDisabled when the mailbox may not send at all)."""
    sender = _sender(session, mailbox_id, limits)
    rows = session.execute(
        select(
            SendingCounter.scope,
            SendingCounter.metric,
            SendingCounter.window_start,
            SendingCounter.count,
        ).where(
            tuple_(SendingCounter.scope, SendingCounter.scope_id, SendingCounter.metric).in_(
                _key_ids(sender)
            )
        )
    ).all()
    counts = {
        (scope, metric): current_count(start, count, metric, now)
        for scope, metric, start, count in rows
    }
    return SendingSnapshot(sender, counts)


def check_sending(
    session: Session,
    *,
    mailbox_id: int,
    now: dt.datetime,
    recipients: int = 0,
    limits: SendingLimits = DEFAULT_LIMITS,
) -> SendingSnapshot:
    """Raise SendingDisabled when the mailbox (its domain, its customer) is suspended or
    ``may_send`` is off; SendLimitExceeded when one more message with ``recipients``
    recipients would pass a limit. Counts nothing (MAIL FROM: 0 recipients). Returns the
    snapshot it read, for the RCPT checks of the same transaction (SMTP's, not the DB's)."""
    if recipients < 0:
        raise ValidationError("recipients must not be negative", field="recipients")
    snapshot = sending_snapshot(session, mailbox_id=mailbox_id, now=now, limits=limits)
    snapshot.check(recipients=recipients, now=now)
    return snapshot


def consume_sending(
    session: Session,
    *,
    mailbox_id: int,
    recipients: int,
    now: dt.datetime,
    limits: SendingLimits = DEFAULT_LIMITS,
) -> None:
    """Count one accepted message with ``recipients`` recipients, atomically with the check,
    in the caller's transaction (commit it with the queue rows, before the 250). Raises
    SendLimitExceeded (counting nothing) instead of passing a limit, and SendingDisabled as
    :func:`check_sending` does (the mailbox may have been suspended during DATA)."""
    if recipients < 0:
        raise ValidationError("recipients must not be negative", field="recipients")
    sender = _sender(session, mailbox_id, limits)
    keys = _key_ids(sender)
    _insert_missing(session, keys, now)
    rows = session.scalars(
        select(SendingCounter)
        .where(
            tuple_(SendingCounter.scope, SendingCounter.scope_id, SendingCounter.metric).in_(keys)
        )
        .order_by(SendingCounter.scope, SendingCounter.scope_id, SendingCounter.metric)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).all()
    by_key = {(row.scope, row.metric): row for row in rows}
    if len(by_key) != len(keys):  # pruned between our insert and our read: very rare
        raise SendLimitExceeded(
            "the sending counters are busy; try again in a minute",
            scope=SEND_SCOPE_MAILBOX,
            metric=SEND_METRIC_MESSAGES,
            name=sender.address,
            count=0,
            limit=sender.mailbox_messages,
            retry_at=now + dt.timedelta(minutes=1),
        )
    counts = {
        key: current_count(row.window_start, row.count, row.metric, now)
        for key, row in by_key.items()
    }
    error = _verdict(sender, counts, recipients=recipients, now=now)
    if error is not None:
        raise error
    rolled_over = False
    for key, row in by_key.items():
        adding = 1 if row.metric == SEND_METRIC_MESSAGES else recipients
        start = window_start(row.metric, now)
        if row.window_start < start:
            row.window_start, row.count = start, adding
            rolled_over = rolled_over or key == (SEND_SCOPE_MAILBOX, SEND_METRIC_MESSAGES)
        else:
            row.count = counts[key] + adding
    session.flush()
    if rolled_over:
        prune_counters(session, now=now)


def _insert_missing(session: Session, keys: list[tuple[str, int, str]], now: dt.datetime) -> None:
    """Create the counter rows that do not exist yet (one statement, in lock order). An
    old window (the epoch) so the first message starts the current one."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    values: list[dict[str, Any]] = [
        {"scope": scope, "scope_id": scope_id, "metric": metric, "window_start": epoch, "count": 0}
        for scope, scope_id, metric in keys
    ]
    if session.get_bind().dialect.name == "postgresql":
        session.execute(postgresql.insert(SendingCounter).values(values).on_conflict_do_nothing())
    else:
        session.execute(sqlite.insert(SendingCounter).values(values).on_conflict_do_nothing())


def prune_counters(session: Session, *, now: dt.datetime) -> int:
    """Delete counter rows whose window ended more than two days ago (they count zero). Rows
    another transaction holds are skipped (PostgreSQL SKIP LOCKED), so pruning never waits
    for, or deadlocks with, a sender; SQLite has one writer at a time anyway."""
    cutoff = now - PRUNE_AFTER
    stale = (
        select(SendingCounter.scope, SendingCounter.scope_id, SendingCounter.metric)
        .where(SendingCounter.window_start < cutoff)
        .with_for_update(skip_locked=True)
    )
    result = session.execute(
        delete(SendingCounter).where(
            tuple_(SendingCounter.scope, SendingCounter.scope_id, SendingCounter.metric).in_(stale)
        ),
        execution_options={"synchronize_session": False},
    )
    return int(getattr(result, "rowcount", 0) or 0)


def record_limit_hit(
    session: Session, *, mailbox_id: int, error: SendLimitExceeded, now: dt.datetime
) -> None:
    """Raise the mailbox's visible "sending limited" flag (until the window passes) and audit
    it. One audit entry per limited period: while the flag is up, further refusals only move
    its end (a client retrying every second must not flood the audit log). The caller commits
    it in its own transaction (the refused message's transaction is rolled back)."""
    mailbox = session.get(Mailbox, mailbox_id, with_for_update=True)
    if mailbox is None:
        raise NotFoundError(f"mailbox {mailbox_id} does not exist", field="mailbox_id")
    already = mailbox.sending_limited_until is not None and mailbox.sending_limited_until > now
    if not already:
        mailbox.sending_limited_since = now
    if mailbox.sending_limited_until is None or mailbox.sending_limited_until < error.retry_at:
        mailbox.sending_limited_until = error.retry_at
    mailbox.sending_limited_reason = error.text[:300]
    if not already:
        audit(
            session,
            actor=SYSTEM_ACTOR,
            action="mailbox.sending_limited",
            object_type="mailbox",
            object_id=mailbox.id,
            object_name=mailbox.address,
            detail=error.text,
        )
    session.flush()


def sending_limited(mailbox: Mailbox, *, now: dt.datetime) -> bool:
    """Whether the mailbox's "sending limited" flag is up at ``now``."""
    return mailbox.sending_limited_until is not None and mailbox.sending_limited_until > now
