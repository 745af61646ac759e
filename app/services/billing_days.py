"""The day arithmetic of billing: lifecycle events replayed into segments, UTC day ranges.

Shared by the per-mailbox report (``app.services.billing``) and the relay-domain line items
(``app.services.billing_relay``), so both count days by the same rule (see billing's module
doc): a day is billable when the object was active at any instant of it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

ACTIVE = "active"
SUSPENDED = "suspended"


def midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


class LifecycleRow(Protocol):
    """The columns of a lifecycle event the replay reads (a Row or a LifecycleEvent)."""

    @property
    def occurred_at(self) -> dt.datetime: ...
    @property
    def entity(self) -> str: ...
    @property
    def entity_id(self) -> int: ...
    @property
    def action(self) -> str: ...
    @property
    def customer_id(self) -> int: ...
    @property
    def domain_name(self) -> str: ...
    @property
    def address(self) -> str | None: ...


@dataclass(slots=True)
class Segment:
    start: dt.datetime
    end: dt.datetime
    state: str


def subtract(
    start: dt.datetime, end: dt.datetime, holes: Sequence[tuple[dt.datetime, dt.datetime]]
) -> tuple[list[tuple[dt.datetime, dt.datetime]], list[tuple[dt.datetime, dt.datetime]]]:
    """Split ``[start, end)`` into (parts outside every hole, parts inside a hole)."""
    outside: list[tuple[dt.datetime, dt.datetime]] = []
    inside: list[tuple[dt.datetime, dt.datetime]] = []
    cursor = start
    for hole_start, hole_end in sorted(holes):
        if hole_end <= cursor or hole_start >= end:
            continue
        if hole_start > cursor:
            outside.append((cursor, hole_start))
        inside.append((max(cursor, hole_start), min(end, hole_end)))
        cursor = max(cursor, hole_end)
        if cursor >= end:
            break
    if cursor < end:
        outside.append((cursor, end))
    return outside, inside


class DayRanges:
    """Maps instants to day indices of the period and counts distinct days."""

    def __init__(self, start: dt.date, days: int) -> None:
        self.start = start
        self.days = days
        self.start_at = midnight(start)
        self.end_at = self.start_at + dt.timedelta(days=days)

    def days_of(self, a: dt.datetime, b: dt.datetime) -> tuple[int, int] | None:
        """Inclusive day-index range touched by ``[a, b)`` inside the period, or None."""
        a, b = max(a, self.start_at), min(b, self.end_at)
        if a >= b:
            return None
        first = (a.date() - self.start).days
        # The last instant inside [a, b) is just before b: b at midnight touches the day before.
        last = ((b - dt.timedelta(microseconds=1)).date() - self.start).days
        return first, last


def merge_days(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def count_days(ranges: Sequence[tuple[int, int]]) -> int:
    return sum(last - first + 1 for first, last in ranges)


def replay_segments(
    events: Sequence[LifecycleRow], until: dt.datetime
) -> list[tuple[str, Segment]]:
    """Replay one object's events (a mailbox's, a relay domain's) into (domain, segment)
    pairs, open ones closed at ``until``.

    A 'created' after a 'deleted' (the address deleted and created again) starts a new life.
    """
    segments: list[tuple[str, Segment]] = []
    state: str | None = None
    since = until
    domain = ""
    for event in events:
        at = event.occurred_at
        if event.action == "deleted":
            if state is not None:
                segments.append((domain, Segment(since, at, state)))
            state = None
            continue
        new_state = SUSPENDED if event.action == "suspended" else ACTIVE
        if state is None:
            domain = event.domain_name
        elif state != new_state:
            segments.append((domain, Segment(since, at, state)))
        else:
            continue  # no change (a repeated event): the segment goes on
        state, since = new_state, at
    if state is not None:
        segments.append((domain, Segment(since, until, state)))
    return segments


def domain_suspensions(
    events: Sequence[LifecycleRow], until: dt.datetime
) -> list[tuple[dt.datetime, dt.datetime]]:
    holes: list[tuple[dt.datetime, dt.datetime]] = []
    since: dt.datetime | None = None
    for event in events:
        if event.action == "suspended" and since is None:
            since = event.occurred_at
        elif event.action in ("resumed", "deleted", "created") and since is not None:
            holes.append((since, event.occurred_at))
            since = None
    if since is not None:
        holes.append((since, until))
    return holes
