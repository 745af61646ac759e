"""Searching and pruning message events (the tracking page, the API and `mailhost trace`).

A search by address or client address answers with the whole story of every message it
matches: first the queue ids of the matching events (the newest ``FOLLOW_LIMIT`` in the time
range), then every event of those messages, plus the matching events themselves (a POP3
retrieval of mail delivered before tracking has no queue id). Results are in time order
(occurred_at, then id) and paged by a cursor of the last (time, id) seen. Every condition is
an equality on an indexed column (addresses are stored lower-cased), so PostgreSQL answers
with a few index scans whatever the table's size.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, or_, select, tuple_
from sqlalchemy.orm import Session

from app.errors import ValidationError
from app.models import MessageEvent

# How many matching events' messages an address or client search follows at most.
FOLLOW_LIMIT = 2000
# A message's events span up to the outbound queue's default maximum age: a search from
# ``since`` also follows messages whose matching event (a reception) came this much earlier.
FOLLOW_LOOKBACK = dt.timedelta(days=5)
MAX_LIMIT = 501  # the API and portal ask for one more than a page (at most 500)


@dataclass(frozen=True, slots=True)
class EventQuery:
    """What to look for; every given criterion must hold (None: any)."""

    address: str | None = None
    queue_id: str | None = None
    client_ip: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    @property
    def empty(self) -> bool:
        return not (self.address or self.queue_id or self.client_ip or self.since or self.until)


def normalise_query(
    *,
    address: str | None = None,
    queue_id: str | None = None,
    client_ip: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> EventQuery:
    """Trim and check the criteria (ValidationError naming the field that is wrong)."""
    address = (address or "").strip().lower() or None
    queue_id = (queue_id or "").strip().upper() or None
    client_ip = (client_ip or "").strip() or None
    if address is not None and (len(address) > 320 or any(c.isspace() for c in address)):
        raise ValidationError("address: give one address, at most 320 characters", field="address")
    if queue_id is not None and (len(queue_id) > 32 or not queue_id.isalnum()):
        raise ValidationError("queue id: letters and digits, at most 32", field="queue_id")
    if client_ip is not None:
        try:
            client_ip = str(ipaddress.ip_address(client_ip))
        except ValueError as exc:
            raise ValidationError(
                f"client address {client_ip!r} is not an IP address", field="client_ip"
            ) from exc
    # A time without a zone is UTC (as every time the portal shows).
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=dt.UTC)
    if until is not None and until.tzinfo is None:
        until = until.replace(tzinfo=dt.UTC)
    if since is not None and until is not None and until < since:
        raise ValidationError("until is before since", field="until")
    return EventQuery(address, queue_id, client_ip, since, until)


def _time_range(query: EventQuery, *, lookback: bool = False) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if query.since is not None:
        since = query.since - FOLLOW_LOOKBACK if lookback else query.since
        conditions.append(MessageEvent.occurred_at >= since)
    if query.until is not None:
        conditions.append(MessageEvent.occurred_at <= query.until)
    return conditions


def _followed(
    session: Session, query: EventQuery, direct: ColumnElement[bool]
) -> ColumnElement[bool]:
    """``direct`` or any event of a message that a ``direct`` event belongs to."""
    queue_ids = session.scalars(
        select(MessageEvent.queue_id)
        .where(direct, MessageEvent.queue_id.is_not(None), *_time_range(query, lookback=True))
        .order_by(MessageEvent.occurred_at.desc())
        .limit(FOLLOW_LIMIT)
    ).all()
    wanted = sorted({q for q in queue_ids if q})
    if not wanted:
        return direct
    return or_(direct, MessageEvent.queue_id.in_(wanted))


def search(
    session: Session,
    *,
    query: EventQuery,
    after: tuple[dt.datetime, int] | None = None,
    limit: int = 50,
) -> Sequence[MessageEvent]:
    """Up to ``limit`` events in time order after the cursor ``after`` (time, id)."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValidationError(f"limit must be 1 to {MAX_LIMIT}", field="limit")
    conditions = _time_range(query)
    if query.queue_id is not None:
        conditions.append(MessageEvent.queue_id == query.queue_id)
    if query.address is not None:
        a = query.address
        direct = or_(
            MessageEvent.sender == a, MessageEvent.recipient == a, MessageEvent.mailbox == a
        )
        conditions.append(_followed(session, query, direct))
    if query.client_ip is not None:
        conditions.append(_followed(session, query, MessageEvent.client_ip == query.client_ip))
    if after is not None:
        conditions.append(tuple_(MessageEvent.occurred_at, MessageEvent.id) > tuple_(*after))
    if query.address is None and query.client_ip is None and query.queue_id is None:
        # A time range alone: read the time index in order, stop after a page.
        statement = (
            select(MessageEvent)
            .where(*conditions)
            .order_by(MessageEvent.occurred_at, MessageEvent.id)
            .limit(limit)
        )
        return session.scalars(statement).all()
    # Selective criteria: the matching rows first (a materialized CTE, from the address /
    # client / queue id indexes), then sorted. Left to itself PostgreSQL walks the time index
    # in order and filters 10 million rows looking for a page of an OR it thinks common.
    hits = select(MessageEvent.id).where(*conditions).cte("hits").prefix_with("MATERIALIZED")
    statement = (
        select(MessageEvent)
        .where(MessageEvent.id.in_(select(hits.c.id)))
        .order_by(MessageEvent.occurred_at, MessageEvent.id)
        .limit(limit)
    )
    return session.scalars(statement).all()


def encode_cursor(event: MessageEvent) -> str:
    """Where the next page starts: the last event's time (microseconds) and id."""
    micros = round(event.occurred_at.timestamp() * 1_000_000)
    raw = f"ev:{micros}:{event.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> tuple[dt.datetime, int] | None:
    """The (time, id) after which a page starts; a cursor carries no criteria (the request's
    apply), so it cannot widen a search."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, micros, event_id = raw.split(":")
        if kind != "ev" or not micros.isdigit() or not event_id.isdigit() or len(event_id) > 18:
            raise ValueError(raw)
        moment = dt.datetime.fromtimestamp(int(micros) / 1_000_000, dt.UTC)
        return moment, int(event_id)
    except (ValueError, OverflowError, OSError, binascii.Error, UnicodeDecodeError) as exc:
        raise ValidationError("invalid pagination cursor", field="cursor") from exc


def search_page(
    session: Session, *, query: EventQuery, cursor: str | None, limit: int
) -> tuple[list[MessageEvent], str | None]:
    """One page and the cursor of the next (None on the last page)."""
    rows = list(search(session, query=query, after=decode_cursor(cursor), limit=limit + 1))
    if len(rows) > limit:
        return rows[:limit], encode_cursor(rows[limit - 1])
    return rows, None


def prune_batch(session: Session, *, older_than: dt.datetime, batch_size: int) -> int:
    """Delete up to ``batch_size`` of the oldest events before ``older_than``."""
    doomed = (
        select(MessageEvent.id)
        .where(MessageEvent.occurred_at < older_than)
        .order_by(MessageEvent.occurred_at)
        .limit(batch_size)
        .scalar_subquery()
    )
    result = session.execute(
        delete(MessageEvent).where(MessageEvent.id.in_(doomed)),
        execution_options={"synchronize_session": False},
    )
    return int(getattr(result, "rowcount", 0) or 0)
