"""Operator actions on the outbound queue: list, show, retry, hold, release, delete (audited)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, selectinload

from app.errors import ConflictError, NotFoundError, ValidationError
from app.models import (
    RCPT_DEFERRED,
    RCPT_HELD,
    RCPT_PENDING,
    RCPT_QUEUED,
    RCPT_STATES,
    OutboundMessage,
    OutboundRecipient,
)
from app.services.addresses import normalise_domain
from app.services.audit import Actor, audit
from app.services.tenancy import isp_only


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """One message as listed: counts of its recipients by state."""

    message: OutboundMessage
    states: dict[str, int]
    next_attempt_at: dt.datetime | None

    @property
    def id(self) -> int:
        """The message's row id: the keyset of list pages."""
        return self.message.id


def get_message(session: Session, *, queue_id: str) -> OutboundMessage:
    """The message with this queue id (any case), its recipients loaded."""
    message = session.scalars(
        select(OutboundMessage)
        .where(OutboundMessage.queue_id == queue_id.strip().upper())
        .options(selectinload(OutboundMessage.recipients))
    ).one_or_none()
    if message is None:
        raise NotFoundError(f"queue id {queue_id} not found", field="queue_id")
    return message


@isp_only("see the outbound queue")
def list_queue(
    session: Session,
    *,
    actor: Actor | None = None,
    state: str | None = None,
    domain: str | None = None,
    sender: str | None = None,
    older_than: dt.datetime | None = None,
    after_id: int | None = None,
    limit: int = 1000,
) -> list[QueueSummary]:
    """Messages in queue order (keyset paging on the id with ``after_id``).

    With ``state``, only those having a recipient in that state; without it, only messages
    with something still to do (queued, deferred or held). ``domain`` keeps messages with
    such a recipient in that destination domain (the recipient must match both), ``sender``
    a case-insensitive part of the envelope sender ("<>" for the null sender: bounces),
    ``older_than`` messages queued at or before that time."""
    if state is not None and state not in RCPT_STATES:
        raise ValidationError(f"state must be one of {', '.join(RCPT_STATES)}", field="state")
    wanted = (state,) if state else RCPT_PENDING
    rcpt_filter: ColumnElement[bool] = OutboundRecipient.state.in_(wanted)
    if domain:
        clean = normalise_domain(domain, field="domain")
        rcpt_filter = rcpt_filter & OutboundRecipient.address.endswith(f"@{clean}", autoescape=True)
    ids = select(OutboundRecipient.message_id).where(rcpt_filter).distinct().scalar_subquery()
    conditions: list[ColumnElement[bool]] = [OutboundMessage.id.in_(ids)]
    if sender is not None and sender.strip():
        wanted_sender = sender.strip().lower()
        if wanted_sender == "<>":
            conditions.append(OutboundMessage.sender == "")
        else:
            conditions.append(
                func.lower(OutboundMessage.sender).contains(wanted_sender, autoescape=True)
            )
    if older_than is not None:
        conditions.append(OutboundMessage.created_at <= older_than)
    if after_id is not None:
        conditions.append(OutboundMessage.id > after_id)
    messages = list(
        session.scalars(
            select(OutboundMessage).where(*conditions).order_by(OutboundMessage.id).limit(limit)
        )
    )
    counts: dict[int, dict[str, int]] = {m.id: {} for m in messages}
    next_at: dict[int, dt.datetime] = {}
    if messages:
        rows = session.execute(
            select(
                OutboundRecipient.message_id,
                OutboundRecipient.state,
                func.count(),
                func.min(OutboundRecipient.next_attempt_at),
            )
            .where(OutboundRecipient.message_id.in_(list(counts)))
            .group_by(OutboundRecipient.message_id, OutboundRecipient.state)
        ).all()
        for message_id, st, count, first in rows:
            counts[message_id][st] = int(count)
            if st in (RCPT_QUEUED, RCPT_DEFERRED) and first is not None:
                next_at[message_id] = min(next_at.get(message_id, first), first)
    return [QueueSummary(m, counts[m.id], next_at.get(m.id)) for m in messages]


def _pending(message: OutboundMessage, states: tuple[str, ...]) -> list[OutboundRecipient]:
    return [r for r in message.recipients if r.state in states]


@isp_only("manage the outbound queue")
def retry_message(
    session: Session, *, actor: Actor, queue_id: str, now: dt.datetime
) -> OutboundMessage:
    """Make every queued or deferred recipient due now (a held one stays held)."""
    message = get_message(session, queue_id=queue_id)
    rows = _pending(message, (RCPT_QUEUED, RCPT_DEFERRED))
    if not rows:
        raise ConflictError(f"{message.queue_id} has no queued or deferred recipient to retry")
    for rcpt in rows:
        rcpt.next_attempt_at = now
    audit(
        session,
        actor=actor,
        action="queue.retry",
        object_type="queue",
        object_id=message.queue_id,
        detail=f"{len(rows)} recipient(s)",
    )
    session.flush()
    return message


@isp_only("manage the outbound queue")
def hold_message(session: Session, *, actor: Actor, queue_id: str) -> OutboundMessage:
    """Stop delivery of every queued or deferred recipient until released. A recipient a
    worker is sending to right now may still be delivered by that attempt."""
    message = get_message(session, queue_id=queue_id)
    rows = _pending(message, (RCPT_QUEUED, RCPT_DEFERRED))
    if not rows:
        raise ConflictError(f"{message.queue_id} has no queued or deferred recipient to hold")
    for rcpt in rows:
        rcpt.state = RCPT_HELD
    audit(
        session,
        actor=actor,
        action="queue.hold",
        object_type="queue",
        object_id=message.queue_id,
        detail=f"{len(rows)} recipient(s)",
    )
    session.flush()
    return message


@isp_only("manage the outbound queue")
def release_message(
    session: Session, *, actor: Actor, queue_id: str, now: dt.datetime
) -> OutboundMessage:
    """Release held recipients: due now (deferred if they had been tried before)."""
    message = get_message(session, queue_id=queue_id)
    rows = _pending(message, (RCPT_HELD,))
    if not rows:
        raise ConflictError(f"{message.queue_id} has no held recipient")
    for rcpt in rows:
        rcpt.state = RCPT_DEFERRED if rcpt.attempts else RCPT_QUEUED
        rcpt.next_attempt_at = now
        rcpt.lease_owner = None
        rcpt.lease_until = None
    audit(
        session,
        actor=actor,
        action="queue.release",
        object_type="queue",
        object_id=message.queue_id,
        detail=f"{len(rows)} recipient(s)",
    )
    session.flush()
    return message


@isp_only("manage the outbound queue")
def delete_message(session: Session, *, actor: Actor, queue_id: str) -> str:
    """Delete a message and all its recipient rows without telling anyone (no bounce).
    Returns its spool id: the edge removes the file after commit (else the orphan cleaner
    does)."""
    message = get_message(session, queue_id=queue_id)
    spool_id = message.spool_id
    pending = len(_pending(message, RCPT_PENDING))
    audit(
        session,
        actor=actor,
        action="queue.delete",
        object_type="queue",
        object_id=message.queue_id,
        object_name=message.sender or "<>",
        detail=f"{len(message.recipients)} recipient(s), {pending} pending",
    )
    session.delete(message)
    session.flush()
    return spool_id
