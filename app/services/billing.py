"""Per-mailbox billing: usage computed from lifecycle events, and the event feed.

Relay domains are billed per domain by the same day rule; their line items come from
``app.services.billing_relay`` and are added to the customer's amount.

Theory of operation
-------------------
Billing never reads the live ``mailboxes`` table to decide what to charge: it replays the
append-only ``lifecycle_events`` (which survive deletion of mailboxes, domains and customers),
so a report for a past period gives the same answer tomorrow as today.

Each mailbox's events are replayed in ``(occurred_at, id)`` order into *segments*: half-open
time intervals ``[start, end)`` in which it existed and was either active or suspended. A
mailbox whose domain was suspended (domain lifecycle events) counts as suspended for that time.
Customer suspension has no lifecycle event and therefore does not change billing.

Day rule (UTC days, documented in the API):

* a **billable day** is a day on which the mailbox was active at any instant; so a mailbox
  created on the 20th of a 30-day month counts 11 days (20..30), the day of a suspension and
  the day of a resumption are billed, and a mailbox created and deleted on the same day is
  billed one day;
* a **suspended day** is a day on which the mailbox existed but was never active; reported,
  never billed;
* each mailbox contributes at most one billable day per calendar day (no double counting);
* the period is the half-open range of days ``[start, end)``; time after ``now`` is never
  counted (a report for the running month is "so far").

Money: ``amount = price_per_mailbox * mailbox_days / days_in_period`` per line item (per
domain), rounded half-up to cents; the customer's amount is the sum of its rounded line items,
so an invoice always adds up. The customer's *current* price applies (prices have no history).
``peak`` is the largest number of mailboxes billable on one day of the period.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import ValidationError
from app.maildir import MailboxRef, MaildirError, MaildirStore
from app.models import Customer, Domain, LifecycleEvent, Mailbox, utcnow
from app.services.billing_days import ACTIVE as _ACTIVE
from app.services.billing_days import DayRanges as _DayRanges
from app.services.billing_days import LifecycleRow as _Event
from app.services.billing_days import count_days as _count
from app.services.billing_days import domain_suspensions as _domain_suspensions
from app.services.billing_days import merge_days as _merge
from app.services.billing_days import replay_segments as _mailbox_segments
from app.services.billing_days import subtract as _subtract
from app.services.billing_relay import RelayUsage, relay_usage

CENT = Decimal("0.01")
# A report over more than a year of days is almost certainly a typo; refuse it early.
MAX_PERIOD_DAYS = 366
_PERIOD = re.compile(r"^(\d{4})-(\d{2})$")


# ------------------------------------------------------------------------------ periods
def month_period(period: str) -> tuple[dt.date, dt.date]:
    """``'YYYY-MM'`` -> (first day of the month, first day of the next month)."""
    match = _PERIOD.match(period.strip())
    if not match:
        raise ValidationError(f"period must look like 2026-03, not {period!r}", field="period")
    year, month = int(match.group(1)), int(match.group(2))
    if not (1 <= month <= 12 and 1 <= year <= 9998):
        raise ValidationError(f"no such month: {period!r}", field="period")
    start = dt.date(year, month, 1)
    end = dt.date(year + 1, 1, 1) if month == 12 else dt.date(year, month + 1, 1)
    return start, end


def check_period(start: dt.date, end: dt.date) -> None:
    """Refuse empty, reversed or over-long periods (``end`` is exclusive)."""
    if end <= start:
        raise ValidationError("'to' must be after 'from' (it is exclusive)", field="to")
    if (end - start).days > MAX_PERIOD_DAYS:
        raise ValidationError(f"a period spans at most {MAX_PERIOD_DAYS} days", field="to")


def prorate(price: Decimal, mailbox_days: int, days_in_period: int) -> Decimal:
    """``price * mailbox_days / days_in_period``, rounded half-up to cents."""
    return (price * mailbox_days / Decimal(days_in_period)).quantize(CENT, rounding=ROUND_HALF_UP)


# ------------------------------------------------------------------------------ report types
@dataclass(slots=True)
class UsageLine:
    """One domain of one customer."""

    domain: str
    mailboxes_active_end: int = 0
    mailboxes_suspended_end: int = 0
    peak_mailboxes: int = 0
    mailbox_days: int = 0
    suspended_days: int = 0
    storage_bytes: int = 0
    storage_messages: int = 0
    amount: Decimal | None = None


@dataclass(slots=True)
class CustomerUsage:
    customer_id: int
    customer_name: str | None  # None once the customer was deleted (its events remain)
    currency: str | None
    price_per_mailbox: Decimal | None
    mailboxes_active_end: int = 0
    mailboxes_suspended_end: int = 0
    peak_mailboxes: int = 0
    mailbox_days: int = 0
    suspended_days: int = 0
    storage_bytes: int = 0
    storage_messages: int = 0
    amount: Decimal | None = None
    lines: list[UsageLine] = field(default_factory=list)
    # Relay domains (app/services/billing_relay.py): billed per domain, prorated by day.
    price_per_relay_domain: Decimal | None = None
    relay_domains_active_end: int = 0
    relay_domain_days: int = 0
    relay_lines: list[RelayUsage] = field(default_factory=list)


@dataclass(slots=True)
class UsageReport:
    start: dt.date
    end: dt.date  # exclusive
    days: int
    generated_at: dt.datetime
    customers: list[CustomerUsage]


# ------------------------------------------------------------------------------ the report
@dataclass(slots=True)
class _LineAcc:
    daily: list[int]
    active_end: int = 0
    suspended_end: int = 0
    mailbox_days: int = 0
    suspended_days: int = 0


def usage_report(
    session: Session,
    *,
    start: dt.date,
    end: dt.date,
    customer_id: int | None = None,
    store: MaildirStore | None = None,
    now: dt.datetime | None = None,
) -> UsageReport:
    """Usage of every customer (or one) for the days ``[start, end)``; see the module doc."""
    check_period(start, end)
    now = now or utcnow()
    days = (end - start).days
    ranges = _DayRanges(start, days)
    # Nothing after "now" is billed: the running month is reported so far.
    until = min(ranges.end_at, now)

    # Plain rows, not ORM objects: a report replays every event up to the period's end, and
    # building 100,000s of tracked objects costs more than the arithmetic.
    query = select(
        LifecycleEvent.id,
        LifecycleEvent.occurred_at,
        LifecycleEvent.entity,
        LifecycleEvent.entity_id,
        LifecycleEvent.action,
        LifecycleEvent.customer_id,
        LifecycleEvent.domain_name,
        LifecycleEvent.address,
    ).where(LifecycleEvent.occurred_at < until)
    if customer_id is not None:
        query = query.where(LifecycleEvent.customer_id == customer_id)
    events: Sequence[_Event] = session.execute(
        query.order_by(LifecycleEvent.occurred_at, LifecycleEvent.id)
    ).all()

    # A mailbox is identified by (id, address): SQLite may hand a deleted mailbox's id to the
    # next new one, and the address of a mailbox never changes, so the pair is unambiguous
    # (one address cannot exist twice at the same time).
    by_mailbox: dict[tuple[int, str], list[_Event]] = defaultdict(list)
    by_domain: dict[tuple[int, str], list[_Event]] = defaultdict(list)
    owner_of_mailbox: dict[tuple[int, str], int] = {}
    for event in events:
        if event.entity == "mailbox":
            key = (event.entity_id, event.address or "")
            by_mailbox[key].append(event)
            owner_of_mailbox[key] = event.customer_id
        elif event.entity == "domain":
            by_domain[(event.customer_id, event.domain_name)].append(event)
    holes = {key: _domain_suspensions(evs, until) for key, evs in by_domain.items()}

    lines: dict[tuple[int, str], _LineAcc] = {}

    def line(cid: int, domain: str) -> _LineAcc:
        acc = lines.get((cid, domain))
        if acc is None:
            acc = lines[(cid, domain)] = _LineAcc(daily=[0] * (days + 1))
        return acc

    for mailbox_id, mailbox_events in by_mailbox.items():
        cid = owner_of_mailbox[mailbox_id]
        per_domain_active: dict[str, list[tuple[int, int]]] = defaultdict(list)
        per_domain_existing: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for domain, seg in _mailbox_segments(mailbox_events, until):
            if seg.state == _ACTIVE:
                active, suspended = _subtract(seg.start, seg.end, holes.get((cid, domain), []))
            else:
                active, suspended = [], [(seg.start, seg.end)]
            for a, b in active:
                if (r := ranges.days_of(a, b)) is not None:
                    per_domain_active[domain].append(r)
            for a, b in active + suspended:
                if (r := ranges.days_of(a, b)) is not None:
                    per_domain_existing[domain].append(r)
            if seg.end == until:  # still open at the end of the period
                if active and active[-1][1] == until:
                    line(cid, domain).active_end += 1
                else:
                    line(cid, domain).suspended_end += 1
        for domain, existing in per_domain_existing.items():
            acc = line(cid, domain)
            billable = _merge(per_domain_active.get(domain, []))
            acc.mailbox_days += _count(billable)
            acc.suspended_days += _count(_merge(existing)) - _count(billable)
            for first, last in billable:
                acc.daily[first] += 1
                acc.daily[last + 1] -= 1

    customers = _customer_rows(session, customer_id)
    storage = _storage(session, store, customer_id) if store is not None else {}
    for cid, domain in storage:
        line(cid, domain)
    relay = relay_usage(events, holes=holes, ranges=ranges, until=until)

    report: dict[int, CustomerUsage] = {}
    for cid in sorted(set(customers) | {cid for cid, _ in lines} | set(relay)):
        row = customers.get(cid)
        report[cid] = CustomerUsage(
            customer_id=cid,
            customer_name=row.name if row else None,
            currency=row.currency if row else None,
            price_per_mailbox=row.price_per_mailbox if row else None,
            amount=Decimal("0.00") if row else None,
            price_per_relay_domain=row.price_per_relay_domain if row else None,
        )
    customer_daily: dict[int, list[int]] = defaultdict(lambda: [0] * days)
    for (cid, domain), acc in sorted(lines.items()):
        cust = report[cid]
        daily, running = [], 0
        for delta in acc.daily[:days]:
            running += delta
            daily.append(running)
        totals = customer_daily[cid]
        for i, count in enumerate(daily):
            totals[i] += count
        used_bytes, used_messages = storage.get((cid, domain), (0, 0))
        item = UsageLine(
            domain=domain,
            mailboxes_active_end=acc.active_end,
            mailboxes_suspended_end=acc.suspended_end,
            peak_mailboxes=max(daily, default=0),
            mailbox_days=acc.mailbox_days,
            suspended_days=acc.suspended_days,
            storage_bytes=used_bytes,
            storage_messages=used_messages,
            amount=(
                prorate(cust.price_per_mailbox, acc.mailbox_days, days)
                if cust.price_per_mailbox is not None
                else None
            ),
        )
        cust.lines.append(item)
        cust.mailboxes_active_end += item.mailboxes_active_end
        cust.mailboxes_suspended_end += item.mailboxes_suspended_end
        cust.mailbox_days += item.mailbox_days
        cust.suspended_days += item.suspended_days
        cust.storage_bytes += item.storage_bytes
        cust.storage_messages += item.storage_messages
        if cust.amount is not None and item.amount is not None:
            cust.amount += item.amount
    for cid, totals in customer_daily.items():
        report[cid].peak_mailboxes = max(totals, default=0)
    for cid, relay_lines in relay.items():
        cust = report[cid]
        for relay_line in relay_lines:
            if cust.price_per_relay_domain is not None:
                relay_line.amount = prorate(
                    cust.price_per_relay_domain, relay_line.relay_domain_days, days
                )
            cust.relay_lines.append(relay_line)
            cust.relay_domain_days += relay_line.relay_domain_days
            cust.relay_domains_active_end += int(relay_line.active_end)
            if cust.amount is not None and relay_line.amount is not None:
                cust.amount += relay_line.amount
    return UsageReport(
        start=start, end=end, days=days, generated_at=now, customers=list(report.values())
    )


def _customer_rows(session: Session, customer_id: int | None) -> dict[int, Customer]:
    query = select(Customer)
    if customer_id is not None:
        query = query.where(Customer.id == customer_id)
    return {c.id: c for c in session.scalars(query)}


def _storage(
    session: Session, store: MaildirStore, customer_id: int | None
) -> dict[tuple[int, str], tuple[int, int]]:
    """Current bytes and messages stored per (customer, domain), from the Maildir store."""
    query = select(Domain.customer_id, Domain.name, Mailbox.local_part).join(
        Mailbox, Mailbox.domain_id == Domain.id
    )
    if customer_id is not None:
        query = query.where(Domain.customer_id == customer_id)
    totals: dict[tuple[int, str], tuple[int, int]] = {}
    for cid, domain, local_part in session.execute(query):
        try:
            used = store.usage(MailboxRef(domain=domain, local_part=local_part))
        except (MaildirError, OSError):
            continue  # an unreadable Maildir must not make the whole report fail
        old_bytes, old_messages = totals.get((cid, domain), (0, 0))
        totals[(cid, domain)] = (old_bytes + used.bytes, old_messages + used.messages)
    return totals


# ------------------------------------------------------------------------------ the feed
def list_events(
    session: Session, *, after_id: int = 0, limit: int = 100, customer_id: int | None = None
) -> list[LifecycleEvent]:
    """Events with id > ``after_id`` in id order, which is commit order (see
    ``audit.record_lifecycle``): a reader that has seen id X never later finds a new id < X."""
    query = select(LifecycleEvent).where(LifecycleEvent.id > after_id)
    if customer_id is not None:
        query = query.where(LifecycleEvent.customer_id == customer_id)
    return list(session.scalars(query.order_by(LifecycleEvent.id).limit(limit)))
