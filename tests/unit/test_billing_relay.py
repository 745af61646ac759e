"""Relay-domain billing from lifecycle events, checked against hand-computed amounts."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from sqlalchemy.orm import Session

from app.models import Customer
from app.services import billing
from tests.unit.test_billing import event

LATER = dt.datetime(2026, 7, 1, tzinfo=dt.UTC)


@pytest.fixture
def relay_scenario(session: Session) -> Session:
    """April 2026 has 30 days. Acme pays 4.99 per mailbox and 15.00 per relay domain; Beta
    pays 9.99 per relay domain.

    m1 mail.a.example      mailbox, created 03-01: the whole month (4.99)
    r1 relay.a.example     created 03-15: the whole month
    r2 mx.b.example        created 04-11 10:00, deleted 04-20 09:00
    r3 c.example           created 04-25 23:00, still there
    r4 d.example           created 04-02 00:00, suspended 04-05 12:00, resumed 04-08 00:00,
                           deleted at exactly 04-09 00:00
    r5 e.example           created 04-01 00:00, deleted 04-03 12:00; created again (new id)
                           04-03 18:00, deleted 04-04 06:00
    r6 f.example           created 03-01; its DOMAIN suspended 04-10 00:00, resumed 04-20 00:00
    r7 g.example (Beta)    created 04-30 12:00
    """
    session.add_all(
        [
            Customer(
                id=1,
                name="Acme",
                price_per_mailbox=Decimal("4.99"),
                price_per_relay_domain=Decimal("15.00"),
            ),
            Customer(id=2, name="Beta", price_per_relay_domain=Decimal("9.99")),
        ]
    )
    event(session, "2026-03-01T00:00", "domain", 1, "created", 1, "mail.a.example")
    event(
        session,
        "2026-03-01T00:00",
        "mailbox",
        1,
        "created",
        1,
        "mail.a.example",
        "m1@mail.a.example",
    )
    relay = [
        ("2026-03-15T08:00", 11, "created", 1, "relay.a.example"),
        ("2026-04-11T10:00", 12, "created", 1, "mx.b.example"),
        ("2026-04-20T09:00", 12, "deleted", 1, "mx.b.example"),
        ("2026-04-25T23:00", 13, "created", 1, "c.example"),
        ("2026-04-02T00:00", 14, "created", 1, "d.example"),
        ("2026-04-05T12:00", 14, "suspended", 1, "d.example"),
        ("2026-04-08T00:00", 14, "resumed", 1, "d.example"),
        ("2026-04-09T00:00", 14, "deleted", 1, "d.example"),
        ("2026-04-01T00:00", 15, "created", 1, "e.example"),
        ("2026-04-03T12:00", 15, "deleted", 1, "e.example"),
        ("2026-04-03T18:00", 16, "created", 1, "e.example"),
        ("2026-04-04T06:00", 16, "deleted", 1, "e.example"),
        ("2026-03-01T00:00", 17, "created", 1, "f.example"),
        ("2026-04-30T12:00", 18, "created", 2, "g.example"),
    ]
    for when, entity_id, action, customer_id, domain in relay:
        event(session, when, "relay_domain", entity_id, action, customer_id, domain)
    event(session, "2026-03-01T00:00", "domain", 17, "created", 1, "f.example")
    event(session, "2026-04-10T00:00", "domain", 17, "suspended", 1, "f.example")
    event(session, "2026-04-20T00:00", "domain", 17, "resumed", 1, "f.example")
    session.commit()
    return session


def test_april_relay_lines_match_hand_computation(relay_scenario: Session) -> None:
    start, end = billing.month_period("2026-04")
    report = billing.usage_report(relay_scenario, start=start, end=end, now=LATER)
    acme, beta = report.customers
    lines = {r.domain: r for r in acme.relay_lines}
    got = {
        d: (r.relay_domain_days, r.suspended_days, r.active_end, r.amount) for d, r in lines.items()
    }
    assert got == {
        # 30 of 30 days: 15.00 * 30 / 30
        "relay.a.example": (30, 0, True, Decimal("15.00")),
        # the 11th..20th (deleted the morning of the 20th: billed) = 10 days: 15 * 10 / 30
        "mx.b.example": (10, 0, False, Decimal("5.00")),
        # the 25th late evening .. 30th = 6 days: 15 * 6 / 30
        "c.example": (6, 0, True, Decimal("3.00")),
        # active 2..5 (4, the 5th until noon), suspended whole days 6 and 7, resumed on the
        # 8th (billed), deleted at midnight: the 9th is not touched. 5 days: 15 * 5 / 30
        "d.example": (5, 2, False, Decimal("2.50")),
        # 1..3 and 3..4: the 3rd counted once -> 4 days: 15 * 4 / 30
        "e.example": (4, 0, False, Decimal("2.00")),
        # the domain suspended the whole of 10..19: 9 + 11 = 20 days, 10 suspended
        "f.example": (20, 10, True, Decimal("10.00")),
    }
    # The mailbox line is untouched: 4.99 * 30 / 30.
    [mailbox_line] = acme.lines
    assert (mailbox_line.domain, mailbox_line.amount) == ("mail.a.example", Decimal("4.99"))
    assert acme.relay_domain_days == 30 + 10 + 6 + 5 + 4 + 20
    assert acme.relay_domains_active_end == 3
    assert acme.price_per_relay_domain == Decimal("15.00")
    # 4.99 + 15.00 + 5.00 + 3.00 + 2.50 + 2.00 + 10.00
    assert acme.amount == Decimal("42.49")
    # Beta: one day (the 30th) at 9.99 / 30 = 0.333 -> 0.33; no mailboxes.
    assert [(r.domain, r.relay_domain_days, r.amount) for r in beta.relay_lines] == [
        ("g.example", 1, Decimal("0.33"))
    ]
    assert beta.lines == []
    assert beta.amount == Decimal("0.33")


def test_may_and_a_running_month(relay_scenario: Session) -> None:
    start, end = billing.month_period("2026-05")
    report = billing.usage_report(relay_scenario, start=start, end=end, now=LATER)
    acme, beta = report.customers
    # May has 31 days; the deleted ones are gone, the rest bill the whole month.
    assert {r.domain: (r.relay_domain_days, r.amount) for r in acme.relay_lines} == {
        "relay.a.example": (31, Decimal("15.00")),
        "c.example": (31, Decimal("15.00")),
        "f.example": (31, Decimal("15.00")),
    }
    assert acme.amount == Decimal("4.99") + Decimal("45.00")
    # Running month: "now" is 05-10 06:00 -> days 1..10 so far: 9.99 * 10 / 31 = 3.2225...
    report = billing.usage_report(
        relay_scenario, start=start, end=end, now=dt.datetime(2026, 5, 10, 6, tzinfo=dt.UTC)
    )
    beta = report.customers[1]
    assert [(r.relay_domain_days, r.amount) for r in beta.relay_lines] == [(10, Decimal("3.22"))]
