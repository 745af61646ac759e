"""Billing arithmetic from lifecycle events, checked against hand-computed answers."""

from __future__ import annotations

import datetime as dt
import threading
import time
from decimal import Decimal

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.errors import ValidationError
from app.models import Customer, LifecycleEvent
from app.services import billing
from app.services.audit import record_lifecycle

UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)


def event(
    session: Session,
    when: str,
    entity: str,
    entity_id: int,
    action: str,
    customer_id: int,
    domain: str,
    address: str | None = None,
) -> None:
    session.add(
        LifecycleEvent(
            occurred_at=at(when),
            entity=entity,
            entity_id=entity_id,
            action=action,
            customer_id=customer_id,
            domain_name=domain,
            address=address,
        )
    )


@pytest.fixture
def scenario(session: Session) -> Session:
    """Two customers; mailboxes created, suspended, resumed and deleted across April/May 2026.

    Customer 1 "Acme" pays 4.99 per mailbox per period; customer 2 "Beta" pays 2.00.
      m1 a.example  created 2026-03-10 10:00, never changed
      m2 a.example  created 2026-04-20 15:00   (the 20th of a 30-day month)
      m3 a.example  created 04-05 08:00, suspended 04-10 12:00, resumed 04-15 09:00,
                    deleted 05-03 18:00 (its row would be gone; its events stay)
      m4 b.example  created 04-28 23:30, suspended at exactly 05-01 00:00, never resumed
      domain b.example suspended 04-29 00:00, resumed 04-30 00:00 (m4 suspended all of the 29th)
      m5 c.example (Beta) created 04-30 23:59:59
    """
    session.add_all(
        [
            Customer(id=1, name="Acme", price_per_mailbox=Decimal("4.99"), currency="EUR"),
            Customer(id=2, name="Beta", price_per_mailbox=Decimal("2.00"), currency="EUR"),
        ]
    )
    event(session, "2026-03-01T09:00", "domain", 1, "created", 1, "a.example")
    event(session, "2026-03-01T09:00", "domain", 2, "created", 1, "b.example")
    event(session, "2026-03-10T10:00", "mailbox", 1, "created", 1, "a.example", "m1@a.example")
    event(session, "2026-04-20T15:00", "mailbox", 2, "created", 1, "a.example", "m2@a.example")
    event(session, "2026-04-05T08:00", "mailbox", 3, "created", 1, "a.example", "m3@a.example")
    event(session, "2026-04-10T12:00", "mailbox", 3, "suspended", 1, "a.example", "m3@a.example")
    event(session, "2026-04-15T09:00", "mailbox", 3, "resumed", 1, "a.example", "m3@a.example")
    event(session, "2026-05-03T18:00", "mailbox", 3, "deleted", 1, "a.example", "m3@a.example")
    event(session, "2026-04-28T23:30", "mailbox", 4, "created", 1, "b.example", "m4@b.example")
    event(session, "2026-04-29T00:00", "domain", 2, "suspended", 1, "b.example")
    event(session, "2026-04-30T00:00", "domain", 2, "resumed", 1, "b.example")
    event(session, "2026-05-01T00:00", "mailbox", 4, "suspended", 1, "b.example", "m4@b.example")
    event(session, "2026-04-01T00:00", "domain", 3, "created", 2, "c.example")
    event(session, "2026-04-30T23:59:59", "mailbox", 5, "created", 2, "c.example", "m5@c.example")
    session.commit()
    return session


LATER = at("2026-07-01T00:00")


def test_april_report_matches_hand_computation(scenario: Session) -> None:
    start, end = billing.month_period("2026-04")
    report = billing.usage_report(scenario, start=start, end=end, now=LATER)
    assert (report.start, report.end, report.days) == (dt.date(2026, 4, 1), dt.date(2026, 5, 1), 30)
    acme, beta = report.customers
    lines = {line.domain: line for line in acme.lines}

    # a.example: m1 all 30 days; m2 days 20..30 = 11; m3 active 5..10 (6 days, the 10th is
    # billed because it was active that morning) and 15..30 (16 days, the 15th billed because
    # it was resumed that day) = 22, suspended whole days 11..14 = 4.  30 + 11 + 22 = 63.
    a = lines["a.example"]
    assert (a.mailbox_days, a.suspended_days) == (63, 4)
    # 4.99 * 63 / 30 = 10.479 -> 10.48 (half-up to cents)
    assert a.amount == Decimal("10.48")
    # Daily counts: 1-4: 1, 5-10: 2, 11-14: 1, 15-19: 2, 20-30: 3 -> peak 3.
    assert a.peak_mailboxes == 3
    assert (a.mailboxes_active_end, a.mailboxes_suspended_end) == (3, 0)

    # b.example: m4 created the 28th late at night: 28 billed; the 29th the domain was
    # suspended the whole day (suspended day); the 30th billed again -> 2 days, 1 suspended.
    # Its own suspension at exactly 05-01 00:00 is not inside April: active at the end.
    b = lines["b.example"]
    assert (b.mailbox_days, b.suspended_days, b.peak_mailboxes) == (2, 1, 1)
    # 4.99 * 2 / 30 = 0.33266... -> 0.33
    assert b.amount == Decimal("0.33")
    assert (b.mailboxes_active_end, b.mailboxes_suspended_end) == (1, 0)

    # Customer totals: amount is the sum of the rounded lines; peak over all domains is the
    # 28th and 30th (m1, m2, m3, m4) = 4, not 3 + 1 by accident: the 29th only has 3.
    assert (acme.mailbox_days, acme.suspended_days) == (65, 5)
    assert acme.amount == Decimal("10.81")
    assert acme.peak_mailboxes == 4
    assert acme.mailboxes_active_end == 4
    assert acme.price_per_mailbox == Decimal("4.99")

    # Beta: m5 created one second before midnight on the 30th still counts that day:
    # 2.00 * 1 / 30 = 0.0666... -> 0.07.
    assert (beta.customer_name, beta.mailbox_days, beta.amount) == ("Beta", 1, Decimal("0.07"))


def test_may_report_across_the_month_boundary(scenario: Session) -> None:
    start, end = billing.month_period("2026-05")
    report = billing.usage_report(scenario, start=start, end=end, customer_id=1, now=LATER)
    [acme] = report.customers
    lines = {line.domain: line for line in acme.lines}
    # a.example: m1 31 + m2 31 + m3 days 1..3 (deleted the 3rd in the evening) = 65.
    # 4.99 * 65 / 31 = 10.4629... -> 10.46
    assert (lines["a.example"].mailbox_days, lines["a.example"].amount) == (65, Decimal("10.46"))
    assert lines["a.example"].peak_mailboxes == 3  # the 1st to the 3rd
    assert lines["a.example"].mailboxes_active_end == 2  # m3 deleted
    # b.example: m4 suspended from the first instant of May: 0 billed, 31 suspended days.
    b = lines["b.example"]
    assert (b.mailbox_days, b.suspended_days, b.amount) == (0, 31, Decimal("0.00"))
    assert (b.mailboxes_active_end, b.mailboxes_suspended_end) == (0, 1)
    assert acme.amount == Decimal("10.46")
    assert [c.customer_id for c in report.customers] == [1]


def test_running_month_counts_only_days_so_far(scenario: Session) -> None:
    start, end = billing.month_period("2026-05")
    report = billing.usage_report(
        scenario, start=start, end=end, customer_id=1, now=at("2026-05-10T12:00")
    )
    [acme] = report.customers
    lines = {line.domain: line for line in acme.lines}
    # Days 1..10 so far: m1 10 + m2 10 + m3 3 = 23; m4 10 suspended days.
    assert lines["a.example"].mailbox_days == 23
    assert lines["b.example"].suspended_days == 10
    assert report.days == 31  # the price is still prorated over the whole month


def test_deleted_customer_keeps_its_history(session: Session) -> None:
    event(session, "2026-04-01T00:00", "mailbox", 9, "created", 77, "gone.example", "x@g.example")
    event(session, "2026-04-11T00:00", "mailbox", 9, "deleted", 77, "gone.example", "x@g.example")
    session.commit()
    start, end = billing.month_period("2026-04")
    [gone] = billing.usage_report(session, start=start, end=end, now=LATER).customers
    # Days 1..10 (deleted at the first instant of the 11th) = 10 days; no price known.
    assert (gone.customer_id, gone.customer_name, gone.mailbox_days) == (77, None, 10)
    assert gone.amount is None


def test_created_and_deleted_the_same_day_is_billed_once(session: Session) -> None:
    session.add(Customer(id=1, name="C", price_per_mailbox=Decimal("30")))
    event(session, "2026-04-07T08:00", "mailbox", 1, "created", 1, "d.example")
    event(session, "2026-04-07T09:00", "mailbox", 1, "suspended", 1, "d.example")
    event(session, "2026-04-07T10:00", "mailbox", 1, "resumed", 1, "d.example")
    event(session, "2026-04-07T11:00", "mailbox", 1, "deleted", 1, "d.example")
    session.commit()
    start, end = billing.month_period("2026-04")
    [c] = billing.usage_report(session, start=start, end=end, now=LATER).customers
    assert (c.mailbox_days, c.suspended_days, c.amount) == (1, 0, Decimal("1.00"))


@pytest.mark.parametrize(
    ("price", "days", "period_days", "expected"),
    [
        ("0.15", 1, 30, "0.01"),  # 0.005: half-up, where banker's rounding would give 0.00
        ("0.45", 1, 30, "0.02"),  # 0.015
        ("4.99", 63, 30, "10.48"),
        ("10", 31, 31, "10.00"),
        ("0", 31, 31, "0.00"),
        ("1.2345", 7, 28, "0.31"),  # 0.308625
    ],
)
def test_prorate_rounds_half_up_to_cents(
    price: str, days: int, period_days: int, expected: str
) -> None:
    assert billing.prorate(Decimal(price), days, period_days) == Decimal(expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-02", (dt.date(2026, 2, 1), dt.date(2026, 3, 1))),
        ("2026-12", (dt.date(2026, 12, 1), dt.date(2027, 1, 1))),
        ("2024-02", (dt.date(2024, 2, 1), dt.date(2024, 3, 1))),
    ],
)
def test_month_period(text: str, expected: tuple[dt.date, dt.date]) -> None:
    assert billing.month_period(text) == expected


@pytest.mark.parametrize("text", ["2026-13", "2026-00", "26-01", "2026-1", "", "2026-01-01"])
def test_month_period_refuses_bad_input(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        billing.month_period(text)
    assert info.value.field == "period"


def test_check_period_refuses_reversed_and_huge_periods() -> None:
    with pytest.raises(ValidationError):
        billing.check_period(dt.date(2026, 5, 1), dt.date(2026, 5, 1))
    with pytest.raises(ValidationError):
        billing.check_period(dt.date(2026, 1, 1), dt.date(2027, 6, 1))


def test_event_feed_pages_in_id_order(session: Session) -> None:
    for i in range(7):
        event(session, f"2026-04-0{i + 1}T00:00", "mailbox", i, "created", 1 + i % 2, "e.example")
    session.commit()
    first = billing.list_events(session, after_id=0, limit=3)
    rest = billing.list_events(session, after_id=first[-1].id, limit=100)
    ids = [e.id for e in first + rest]
    assert ids == sorted(ids) and len(set(ids)) == 7
    only_two = billing.list_events(session, after_id=0, customer_id=2)
    assert {e.customer_id for e in only_two} == {2} and len(only_two) == 3


def test_concurrent_writers_never_make_a_syncing_reader_miss_an_event(
    session_factory: sessionmaker[Session],
) -> None:
    """Writers in several threads hold their transaction open a little after inserting (so a
    smaller id would commit after a larger one if ids were not commit-ordered); a reader syncs
    incrementally the whole time. At the end the reader must hold every event exactly once,
    in id order: nothing missed, nothing repeated."""
    writers, per_writer = 4, 15
    done = threading.Event()
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(per_writer):
                with transaction(session_factory) as s:
                    record_lifecycle(
                        s,
                        entity="mailbox",
                        entity_id=n * 1000 + i,
                        action="created",
                        customer_id=1,
                        domain_name="race.example",
                    )
                    time.sleep(0.003 * ((n + i) % 3))  # commit late, in shuffled order
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    seen: list[int] = []

    def read() -> None:
        cursor = 0
        try:
            while True:
                finished = done.is_set()  # read once more after the writers finished
                with transaction(session_factory) as s:
                    page = billing.list_events(s, after_id=cursor, limit=7)
                seen.extend(e.id for e in page)
                if page:
                    cursor = page[-1].id
                elif finished:
                    return
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    reader = threading.Thread(target=read)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    done.set()
    reader.join(timeout=120)
    assert not errors, errors

    with transaction(session_factory) as s:
        all_ids = [e.id for e in billing.list_events(s, after_id=0, limit=10_000)]
    assert len(all_ids) == writers * per_writer
    assert seen == all_ids  # same events, same order, none missing, none repeated


def test_a_reused_mailbox_id_is_not_confused_with_its_predecessor(session: Session) -> None:
    """SQLite may hand a deleted mailbox's id to the next new mailbox; the events of the two
    interleave in time (the new one is backdated here) and must still be two mailboxes."""
    session.add(Customer(id=1, name="C", price_per_mailbox=Decimal("30")))
    event(session, "2026-04-25T09:00", "mailbox", 3, "created", 1, "d.example", "old@d.example")
    event(session, "2026-05-02T07:00", "mailbox", 3, "deleted", 1, "d.example", "old@d.example")
    event(session, "2026-04-30T08:00", "mailbox", 3, "created", 1, "d.example", "new@d.example")
    session.commit()
    start, end = billing.month_period("2026-05")
    [c] = billing.usage_report(session, start=start, end=end, now=LATER).customers
    # old: 1..2 = 2 days; new: all 31 days -> 33; new is still active at the end.
    assert (c.mailbox_days, c.mailboxes_active_end) == (33, 1)
