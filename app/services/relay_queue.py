"""The outbound queue seen per relay domain: which rows are its mail, counts, hold and flush.

A relay domain's mail is every queue row whose recipient address is ``...@<domain>``,
whatever its origin (mail from the MX, or submitted by a hosted user). Holding a domain puts
its queued and deferred rows in state 'held' (the agent claims only queued/deferred rows);
releasing makes them queued and due now. Kept apart from app/services/relay.py so that
app/services/domains.py can refuse deleting a relay domain with queued mail without an
import cycle.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import ColumnElement, case, delete, func, select, update
from sqlalchemy.orm import Session

from app.errors import ConflictError
from app.models import (
    RCPT_DEFERRED,
    RCPT_HELD,
    RCPT_PENDING,
    RCPT_QUEUED,
    Domain,
    OutboundMessage,
    OutboundRecipient,
)


def _of_domain(domain_name: str) -> ColumnElement[bool]:
    # Queue addresses keep the local part as given but the domain is IDNA lower case
    # (queue.clean_remote_address), so a suffix match is exact.
    return OutboundRecipient.address.endswith(f"@{domain_name}", autoescape=True)


@dataclass(frozen=True, slots=True)
class RelayQueueSummary:
    """Pending mail of one relay domain: recipients still to deliver (queued, deferred or
    held), the oldest one's queue time, and the last error a delivery attempt got."""

    count: int
    held: int
    oldest: dt.datetime | None
    last_error: str | None
    last_error_at: dt.datetime | None


def pending_count(session: Session, *, domain_name: str) -> int:
    return int(
        session.scalar(
            select(func.count(OutboundRecipient.id)).where(
                _of_domain(domain_name), OutboundRecipient.state.in_(RCPT_PENDING)
            )
        )
        or 0
    )


def check_deletable(session: Session, *, domain: Domain) -> None:
    """ConflictError while mail for the relay domain is queued (relay.delete_relay_domain
    discards it first when asked to)."""
    pending = pending_count(session, domain_name=domain.name)
    if pending:
        raise ConflictError(
            f"{domain.name} has {pending} queued recipient(s); deliver them first or delete "
            "the relay domain discarding them",
            field="discard",
        )


def summary(session: Session, *, domain_name: str) -> RelayQueueSummary:
    pending = _of_domain(domain_name) & OutboundRecipient.state.in_(RCPT_PENDING)
    count, held, oldest = session.execute(
        select(
            func.count(OutboundRecipient.id),
            func.coalesce(func.sum(case((OutboundRecipient.state == RCPT_HELD, 1), else_=0)), 0),
            func.min(OutboundMessage.created_at),
        )
        .join(OutboundMessage, OutboundRecipient.message_id == OutboundMessage.id)
        .where(pending)
    ).one()
    last = session.execute(
        select(
            OutboundRecipient.last_reply_code,
            OutboundRecipient.last_reply_text,
            OutboundRecipient.last_attempt_at,
        )
        .where(pending, OutboundRecipient.last_attempt_at.is_not(None))
        .order_by(OutboundRecipient.last_attempt_at.desc(), OutboundRecipient.id.desc())
        .limit(1)
    ).first()
    oldest_at = oldest
    if isinstance(oldest_at, dt.datetime) and oldest_at.tzinfo is None:
        oldest_at = oldest_at.replace(tzinfo=dt.UTC)  # SQLite's MIN() bypasses UTCDateTime
    last_error = None if last is None else f"{last[0]} {last[1]}"
    return RelayQueueSummary(
        count=int(count or 0),
        held=int(held or 0),
        oldest=oldest_at,
        last_error=last_error,
        last_error_at=None if last is None else last[2],
    )


def hold_rows(session: Session, *, domain_name: str) -> int:
    result = session.execute(
        update(OutboundRecipient)
        .where(
            _of_domain(domain_name),
            OutboundRecipient.state.in_((RCPT_QUEUED, RCPT_DEFERRED)),
            OutboundRecipient.lease_owner.is_(None),
        )
        .values(state=RCPT_HELD)
        .execution_options(synchronize_session="fetch")
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def release_rows(session: Session, *, domain_name: str, now: dt.datetime) -> int:
    result = session.execute(
        update(OutboundRecipient)
        .where(_of_domain(domain_name), OutboundRecipient.state == RCPT_HELD)
        .values(state=RCPT_QUEUED, next_attempt_at=now)
        .execution_options(synchronize_session="fetch")
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def flush_rows(session: Session, *, domain_name: str, now: dt.datetime) -> int:
    """Make the domain's queued and deferred rows due now (held rows stay held)."""
    result = session.execute(
        update(OutboundRecipient)
        .where(
            _of_domain(domain_name),
            OutboundRecipient.state.in_((RCPT_QUEUED, RCPT_DEFERRED)),
            OutboundRecipient.next_attempt_at > now,
        )
        .values(next_attempt_at=now)
        .execution_options(synchronize_session="fetch")
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def discard_rows(session: Session, *, domain_name: str) -> tuple[int, list[str]]:
    """Delete the domain's pending rows (no bounce); messages left without any recipient row
    are deleted too. Returns (rows deleted, spool ids of deleted messages: the edge removes
    those files after commit, else the orphan cleaner does)."""
    pending = _of_domain(domain_name) & OutboundRecipient.state.in_(RCPT_PENDING)
    message_ids = list(
        session.scalars(select(OutboundRecipient.message_id).where(pending).distinct())
    )
    result = session.execute(
        delete(OutboundRecipient).where(pending).execution_options(synchronize_session="fetch")
    )
    spool_ids: list[str] = []
    if message_ids:
        left = set(
            session.scalars(
                select(OutboundRecipient.message_id)
                .where(OutboundRecipient.message_id.in_(message_ids))
                .distinct()
            )
        )
        empty = [m for m in message_ids if m not in left]
        if empty:
            spool_ids = list(
                session.scalars(
                    select(OutboundMessage.spool_id).where(OutboundMessage.id.in_(empty))
                )
            )
            session.execute(
                delete(OutboundMessage)
                .where(OutboundMessage.id.in_(empty))
                .execution_options(synchronize_session="fetch")
            )
    return int(result.rowcount), spool_ids  # type: ignore[attr-defined]
