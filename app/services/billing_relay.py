"""Relay-domain billing: relay-domain days from lifecycle events, one line item per relay domain.

A relay domain (the "SMTP mail connection") is billed per domain, prorated by day exactly like
a mailbox (``app.services.billing_days``): each relay domain's ``relay_domain`` lifecycle
events (created, suspended, resumed, deleted) are replayed into segments; the time its domain
was suspended (``domain`` events) counts as suspended; a **relay-domain day** is a UTC day of
the period on which it was active at any instant, and a day on which it existed but was never
active is a suspended day (reported, not billed). A domain name deleted and created again in
one period is one line item, each day counted once.

Money: ``amount = price_per_relay_domain * relay_domain_days / days_in_period``, rounded
half-up to cents per line item (``billing.prorate``); the customer's amount adds the rounded
relay lines to its mailbox lines.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from app.services.billing_days import (
    ACTIVE,
    DayRanges,
    LifecycleRow,
    count_days,
    merge_days,
    replay_segments,
    subtract,
)

ENTITY = "relay_domain"


@dataclass(slots=True)
class RelayUsage:
    """One relay domain of one customer over the period (no money yet)."""

    domain: str
    relay_domain_days: int = 0
    suspended_days: int = 0
    active_end: bool = False  # active just before the end of the period (or now)
    suspended_end: bool = False  # exists but suspended then
    amount: Decimal | None = None  # set by billing.usage_report from the customer's price


Holes = Mapping[tuple[int, str], Sequence[tuple[dt.datetime, dt.datetime]]]


def relay_usage(
    events: Iterable[LifecycleRow], *, holes: Holes, ranges: DayRanges, until: dt.datetime
) -> dict[int, list[RelayUsage]]:
    """Customer id -> its relay domains' usage, by domain name. ``events`` are lifecycle
    rows in ``(occurred_at, id)`` order (others than ``relay_domain`` are ignored); ``holes``
    are the domain suspensions per (customer id, domain name)."""
    per_object: dict[tuple[int, int, str], list[LifecycleRow]] = defaultdict(list)
    for event in events:
        if event.entity == ENTITY:
            per_object[(event.customer_id, event.entity_id, event.domain_name)].append(event)

    active_days: dict[tuple[int, str], list[tuple[int, int]]] = defaultdict(list)
    existing_days: dict[tuple[int, str], list[tuple[int, int]]] = defaultdict(list)
    at_end: dict[tuple[int, str], str] = {}
    for (cid, _, _), object_events in per_object.items():
        for domain, seg in replay_segments(object_events, until):
            key = (cid, domain)
            if seg.state == ACTIVE:
                active, suspended = subtract(seg.start, seg.end, holes.get(key, ()))
            else:
                active, suspended = [], [(seg.start, seg.end)]
            for a, b in active:
                if (r := ranges.days_of(a, b)) is not None:
                    active_days[key].append(r)
            for a, b in active + suspended:
                if (r := ranges.days_of(a, b)) is not None:
                    existing_days[key].append(r)
            if seg.end == until and ranges.days_of(seg.start, seg.end) is not None:
                at_end[key] = "active" if active and active[-1][1] == until else "suspended"

    result: dict[int, list[RelayUsage]] = defaultdict(list)
    for key in sorted(existing_days):
        cid, domain = key
        billable = count_days(merge_days(active_days.get(key, [])))
        existed = count_days(merge_days(existing_days[key]))
        result[cid].append(
            RelayUsage(
                domain=domain,
                relay_domain_days=billable,
                suspended_days=existed - billable,
                active_end=at_end.get(key) == "active",
                suspended_end=at_end.get(key) == "suspended",
            )
        )
    return dict(result)
