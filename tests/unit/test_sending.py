"""The sending policy on a real database: who may send as whom, the limits and their windows."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import NotFoundError, SendingDisabled, SendLimitExceeded
from app.models import AuditEntry, Customer, Domain, Mailbox, SendingCounter
from app.services import domains, sending
from app.services.audit import CLI_ACTOR
from app.services.sending import SendingLimits
from tests.factories import make_alias, make_customer, make_domain, make_mailbox

T0 = dt.datetime(2026, 12, 1, 14, 30, tzinfo=dt.UTC)
LIMITS = SendingLimits(
    mailbox_messages_per_hour=3,
    mailbox_recipients_per_day=10,
    customer_messages_per_hour=5,
    customer_recipients_per_day=20,
)


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


# ------------------------------------------------------------------------------ may_send_as
@pytest.fixture
def people(session: Session) -> dict[str, int]:
    """alice and bob at a.example (alias domain alias.example), carol at b.example; aliases:
    info -> alice, team -> (info, bob), chain1 -> chain2 -> alice, other -> carol, a catch-all
    to alice and a postmaster@ that resolves to the domain's oldest mailbox (alice)."""
    customer = make_customer(session, "Shared Ltd")
    make_domain(session, "a.example", customer)
    make_domain(session, "b.example", customer)
    alice = make_mailbox(session, "alice@a.example")
    bob = make_mailbox(session, "bob@a.example")
    carol = make_mailbox(session, "carol@b.example")
    make_alias(session, "info@a.example", ["alice@a.example"])
    make_alias(session, "team@a.example", ["info@a.example", "bob@a.example"])
    make_alias(session, "chain2@a.example", ["alice@a.example"])
    make_alias(session, "chain1@a.example", ["chain2@a.example"])
    make_alias(session, "other@a.example", ["carol@b.example"])
    a_domain = session.scalars(select(Domain).where(Domain.name == "a.example")).one()
    a_domain.catchall_target = "alice@a.example"
    domains.add_domain_alias(
        session, actor=CLI_ACTOR, domain_id=a_domain.id, alias_name="alias.example"
    )
    session.flush()
    return {"alice": alice.id, "bob": bob.id, "carol": carol.id}


@pytest.mark.parametrize(
    ("who", "address", "allowed"),
    [
        ("alice", "alice@a.example", True),  # own address
        ("alice", "Alice@A.EXAMPLE", True),  # case, as the MX compares
        ("alice", " alice@a.example ", True),
        ("alice", "info@a.example", True),  # alias -> mailbox
        ("alice", "team@a.example", True),  # alias -> alias -> mailbox
        ("bob", "team@a.example", True),  # a list alias: every member
        ("alice", "chain1@a.example", True),  # chain of two aliases
        ("alice", "alice@alias.example", True),  # alias domain
        ("alice", "INFO@Alias.Example", True),  # alias in an alias domain
        ("bob", "info@a.example", False),  # alias of somebody else
        ("alice", "bob@a.example", False),  # a colleague
        ("alice", "other@a.example", False),  # alias to another domain's mailbox
        ("carol", "other@a.example", True),  # ... which is carol's
        ("alice", "carol@b.example", False),  # other domain
        ("alice", "alice@b.example", False),  # own local part, other domain
        ("alice", "alice@unhosted.example", False),  # not hosted at all
        ("alice", "nobody@a.example", False),  # catch-all does not count
        ("alice", "postmaster@a.example", False),  # postmaster fallback does not count
        ("alice", "", False),  # null sender
        ("alice", "alice", False),
        ("alice", "alice@a.example@b.example", False),
        ("alice", "al%ice@a.example", False),
    ],
)
def test_may_send_as(
    session: Session, people: dict[str, int], who: str, address: str, allowed: bool
) -> None:
    assert sending.may_send_as(session, mailbox_id=people[who], address=address) is allowed


def test_may_send_as_a_suspended_alias_target_no_longer_counts(
    session: Session, people: dict[str, int]
) -> None:
    bob = session.get(Mailbox, people["bob"])
    assert bob is not None
    bob.status = "suspended"
    session.flush()
    assert not sending.may_send_as(session, mailbox_id=people["bob"], address="team@a.example")
    assert sending.may_send_as(session, mailbox_id=people["alice"], address="team@a.example")


# ------------------------------------------------------------------------------ disabled
@pytest.fixture
def alice(session: Session) -> Mailbox:
    make_customer(session, "Alice Co")
    mailbox = make_mailbox(session, "alice@send.example")
    return mailbox


@pytest.mark.parametrize("what", ["may_send", "mailbox", "domain", "customer"])
def test_disabled_mailbox_may_not_send(session: Session, alice: Mailbox, what: str) -> None:
    if what == "may_send":
        alice.may_send = False
    elif what == "mailbox":
        alice.status = "suspended"
    elif what == "domain":
        alice.domain.status = "suspended"
    else:
        alice.domain.customer.status = "suspended"
    session.flush()
    with pytest.raises(SendingDisabled) as info:
        sending.check_sending(session, mailbox_id=alice.id, now=T0, limits=LIMITS)
    expected = {
        "may_send": "mailbox alice@send.example is not allowed to send mail",
        "mailbox": "mailbox alice@send.example is suspended",
        "domain": "domain send.example is suspended",
        "customer": "the customer account of alice@send.example is suspended",
    }[what]
    assert info.value.text == expected
    with pytest.raises(SendingDisabled):
        sending.consume_sending(session, mailbox_id=alice.id, recipients=1, now=T0, limits=LIMITS)
    assert session.scalar(select(func.count()).select_from(SendingCounter)) == 0


def test_unknown_mailbox(session: Session) -> None:
    with pytest.raises(NotFoundError):
        sending.check_sending(session, mailbox_id=999, now=T0)


# ------------------------------------------------------------------------------ limits
def consume(session: Session, mailbox: Mailbox, recipients: int = 1, minutes: float = 0) -> None:
    sending.consume_sending(
        session, mailbox_id=mailbox.id, recipients=recipients, now=at(minutes), limits=LIMITS
    )


def test_messages_per_hour_reached_exactly(session: Session, alice: Mailbox) -> None:
    for i in range(3):
        sending.check_sending(session, mailbox_id=alice.id, now=at(i), limits=LIMITS)
        consume(session, alice, minutes=i)
    with pytest.raises(SendLimitExceeded) as info:
        sending.check_sending(session, mailbox_id=alice.id, now=at(5), limits=LIMITS)
    error = info.value
    assert error.text == (
        "mailbox alice@send.example sent 3 messages this hour (limit 3 per hour); "
        "try again after 15:00 UTC"
    )
    assert (error.scope, error.metric, error.count, error.limit) == (
        "mailbox",
        "messages_hour",
        3,
        3,
    )
    assert error.retry_at == dt.datetime(2026, 12, 1, 15, 0, tzinfo=dt.UTC)
    with pytest.raises(SendLimitExceeded):
        consume(session, alice, minutes=5)
    # Nothing was counted by the refusal: the window's count is still 3 (and recipients 3).
    counts = dict(
        session.execute(
            select(SendingCounter.metric, SendingCounter.count).where(
                SendingCounter.scope == "mailbox"
            )
        ).all()
    )
    assert counts == {"messages_hour": 3, "recipients_day": 3}


def test_check_counts_nothing(session: Session, alice: Mailbox) -> None:
    for _ in range(10):
        sending.check_sending(session, mailbox_id=alice.id, now=T0, recipients=5, limits=LIMITS)
    assert session.scalar(select(func.count()).select_from(SendingCounter)) == 0


def test_hour_window_rolls_over(session: Session, alice: Mailbox) -> None:
    for i in range(3):
        consume(session, alice, minutes=i)
    with pytest.raises(SendLimitExceeded):
        consume(session, alice, minutes=29.99)  # 14:59:59
    consume(session, alice, minutes=30)  # 15:00: a new hour
    sending.check_sending(session, mailbox_id=alice.id, now=at(31), limits=LIMITS)


def test_recipients_per_day(session: Session, alice: Mailbox) -> None:
    consume(session, alice, recipients=6)
    # At RCPT: 4 recipients so far still fit (6 + 4 = 10), 5 do not.
    sending.check_sending(session, mailbox_id=alice.id, now=at(1), recipients=4, limits=LIMITS)
    with pytest.raises(SendLimitExceeded) as info:
        sending.check_sending(session, mailbox_id=alice.id, now=at(1), recipients=5, limits=LIMITS)
    assert info.value.text == (
        "mailbox alice@send.example sent to 6 recipients today, 5 more would pass the limit "
        "of 10 per day; try again after 2026-12-02 00:00 UTC"
    )
    with pytest.raises(SendLimitExceeded):
        consume(session, alice, recipients=5, minutes=1)
    consume(session, alice, recipients=4, minutes=2)  # exactly 10
    with pytest.raises(SendLimitExceeded):
        consume(session, alice, recipients=1, minutes=70)  # next hour, same day
    # The next UTC day.
    consume(session, alice, recipients=10, minutes=9.5 * 60 + 1)


def test_customer_limit_hits_before_mailbox_limit(session: Session) -> None:
    customer = make_customer(session, "Busy Ltd")
    make_domain(session, "busy.example", customer)
    boxes = [make_mailbox(session, f"u{i}@busy.example") for i in range(3)]
    sent = 0
    for box in boxes[:2]:
        for _ in range(2):
            consume(session, box)
            sent += 1
    consume(session, boxes[2])  # the fifth message of the customer this hour
    with pytest.raises(SendLimitExceeded) as info:
        consume(session, boxes[2])  # the mailbox has sent 1 of its 3
    assert info.value.scope == "customer"
    assert info.value.name == "Busy Ltd"
    assert info.value.text == (
        "the customer account of u2@busy.example sent 5 messages this hour "
        "(limit 5 per hour); try again after 15:00 UTC"
    )


def test_mailbox_limit_named_when_both_are_spent(session: Session) -> None:
    customer = make_customer(session, "Tiny Ltd")
    customer.max_messages_per_hour = 3
    make_domain(session, "tiny.example", customer)
    box = make_mailbox(session, "u@tiny.example")
    for _ in range(3):
        consume(session, box)
    with pytest.raises(SendLimitExceeded) as info:
        consume(session, box)
    assert info.value.scope == "mailbox"


def test_mailbox_override_and_inherit(session: Session, alice: Mailbox) -> None:
    alice.max_messages_per_hour = 1
    session.flush()
    consume(session, alice)
    with pytest.raises(SendLimitExceeded):
        consume(session, alice)
    alice.max_messages_per_hour = 4  # above the platform default of 3
    session.flush()
    consume(session, alice)
    consume(session, alice)
    consume(session, alice)
    with pytest.raises(SendLimitExceeded) as info:
        consume(session, alice)
    assert info.value.limit == 4
    alice.max_messages_per_hour = None  # inherits the platform's 3 again: spent
    session.flush()
    with pytest.raises(SendLimitExceeded) as info:
        consume(session, alice)
    assert info.value.limit == 3


def test_customer_override(session: Session) -> None:
    customer = make_customer(session, "Big Ltd")
    customer.max_recipients_per_day = 12
    make_domain(session, "big.example", customer)
    a = make_mailbox(session, "a@big.example")
    b = make_mailbox(session, "b@big.example")
    consume(session, a, recipients=10)
    with pytest.raises(SendLimitExceeded) as info:
        consume(session, b, recipients=3)
    assert (info.value.scope, info.value.metric, info.value.limit) == (
        "customer",
        "recipients_day",
        12,
    )
    consume(session, b, recipients=2)


def test_platform_defaults_from_settings() -> None:
    from app.config import Settings

    limits = SendingLimits.from_settings(Settings(_env_file=None))  # type: ignore[call-arg]
    assert limits == SendingLimits(200, 1000, 2000, 10000)


def test_old_counter_rows_are_pruned(session: Session, alice: Mailbox) -> None:
    other = make_mailbox(session, "idle@send.example")
    consume(session, other)
    consume(session, alice, minutes=0)
    assert session.scalar(select(func.count()).select_from(SendingCounter)) == 6
    # Three days later alice opens a new hour: idle's rows (and nothing current) go.
    consume(session, alice, minutes=3 * 24 * 60)
    keys = set(session.execute(select(SendingCounter.scope, SendingCounter.scope_id)).all())
    customer_id = alice.domain.customer_id
    assert keys == {("mailbox", alice.id), ("customer", customer_id)}


# ------------------------------------------------------------------------------ the flag
def test_record_limit_hit_sets_flag_and_audits_once(session: Session, alice: Mailbox) -> None:
    for _ in range(3):
        consume(session, alice)
    errors: list[SendLimitExceeded] = []
    for minute in (1, 2, 3):
        with pytest.raises(SendLimitExceeded) as info:
            consume(session, alice, minutes=minute)
        errors.append(info.value)
        sending.record_limit_hit(session, mailbox_id=alice.id, error=info.value, now=at(minute))
    session.refresh(alice)
    assert alice.sending_limited_since == at(1)
    assert alice.sending_limited_until == dt.datetime(2026, 12, 1, 15, 0, tzinfo=dt.UTC)
    assert alice.sending_limited_reason == errors[0].text
    assert sending.sending_limited(alice, now=at(29))
    assert not sending.sending_limited(alice, now=at(30))  # the window passed
    entries = session.scalars(
        select(AuditEntry).where(AuditEntry.action == "mailbox.sending_limited")
    ).all()
    assert [(e.actor_type, e.object_name, e.detail) for e in entries] == [
        ("system", "alice@send.example", errors[0].text)
    ]
    # A new limited period after the flag expired is audited again.
    for _ in range(3):
        consume(session, alice, minutes=31)
    with pytest.raises(SendLimitExceeded) as info:
        consume(session, alice, minutes=32)
    sending.record_limit_hit(session, mailbox_id=alice.id, error=info.value, now=at(32))
    assert (
        session.scalar(
            select(func.count())
            .select_from(AuditEntry)
            .where(AuditEntry.action == "mailbox.sending_limited")
        )
        == 2
    )
    assert alice.sending_limited_since == at(32)


def test_customer_row_is_shared(session: Session) -> None:
    """The customer's counter is one row whatever mailbox sends (no per-mailbox copy)."""
    customer = make_customer(session, "Row Ltd")
    make_domain(session, "row.example", customer)
    a = make_mailbox(session, "a@row.example")
    b = make_mailbox(session, "b@row.example")
    consume(session, a, recipients=2)
    consume(session, b, recipients=3)
    row = session.get(SendingCounter, ("customer", customer.id, "recipients_day"))
    assert row is not None and row.count == 5
    assert isinstance(session.get(Customer, customer.id), Customer)
