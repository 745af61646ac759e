"""The login throttle service on a real database: budgets, in-flight charges, realms, races."""

from __future__ import annotations

import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.errors import ValidationError
from app.models import LoginCounter, LoginKnownAddress, utcnow
from app.services import throttle
from app.services.throttle import Outcome, Refused, ThrottlePolicy, Ticket

POLICY = ThrottlePolicy(
    address_budget=3,
    address_refill_seconds=60.0,
    account_budget=5,
    account_refill_seconds=100.0,
    known_address_days=30,
)
T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def reserve(
    session: Session,
    ip: str,
    account: str = "alice@a.example",
    *,
    when: float = 0,
    door: throttle.Door = "pop3",
) -> Ticket | Refused:
    return throttle.reserve(
        session, door=door, address=ip, account=account, policy=POLICY, now=at(when)
    )


def settle(session: Session, ticket: Ticket | Refused, outcome: Outcome, when: float = 0) -> None:
    assert isinstance(ticket, Ticket), ticket
    throttle.settle(session, ticket=ticket, outcome=outcome, policy=POLICY, now=at(when))


# ------------------------------------------------------------------------------ arithmetic
@pytest.mark.parametrize(
    ("charged", "elapsed", "expected"),
    [
        (0, 0, 0),
        (0, 1000, 0),
        (3, 0, 3),
        (3, 59.9, 3),
        (3, 60, 2),
        (3, 119, 2),
        (3, 150, 1),
        (3, 180, 0),
        (3, 10_000, 0),
        (3, -30, 3),  # the clock went back: nothing drains, nothing is added
    ],
)
def test_one_unit_drains_per_refill_period(charged: int, elapsed: float, expected: int) -> None:
    left, since = throttle.drained(charged, T0, at(elapsed), 60.0)
    assert left == expected
    if 0 < expected < charged:
        # The remainder of a period is kept: draining in two steps equals one step.
        assert throttle.drained(left, since, at(elapsed + 60), 60.0)[0] == expected - 1


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("fe80::1%eth0", "fe80::/64"),
        ("testclient", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_clients_are_counted_by_ipv4_address_or_ipv6_slash_64(
    address: str | None, network: str
) -> None:
    assert throttle.client_network(address) == network


@pytest.mark.parametrize(
    ("door", "account", "key"),
    [
        ("pop3", "alice@a.example", "mail:user:alice@a.example"),
        ("smtp", " Alice@A.Example ", "mail:user:alice@a.example"),
        ("pop3", "alice@BÜCHER.example", "mail:user:alice@xn--bcher-kva.example"),
        ("pop3", "not an address", "mail:user:not an address"),
        ("pop3", "evil\r\nline", "mail:user:evil\\r\\nline"),
        ("portal", "Alice", "portal:user:alice"),
    ],
)
def test_account_keys_are_normalised_per_realm(door: throttle.Door, account: str, key: str) -> None:
    assert throttle.account_key(door=door, account=account) == key


def test_an_unknown_door_is_refused() -> None:
    with pytest.raises(ValidationError):
        throttle.address_key(door="imap", address="192.0.2.1")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ budgets
def test_attempts_in_flight_count_and_refusal_is_immediate(session: Session) -> None:
    # Three reservations never settled (in flight) spend the address budget of 3.
    tickets = [reserve(session, "192.0.2.1", f"u{i}@a.example") for i in range(3)]
    assert all(isinstance(t, Ticket) for t in tickets)
    refused = reserve(session, "192.0.2.1", "u9@a.example", when=10)
    assert refused == Refused("address", 50)
    # Another network is not affected, and the account of the refused attempt was not charged.
    assert isinstance(reserve(session, "192.0.2.2", "u9@a.example", when=10), Ticket)
    key = throttle.account_key(door="pop3", account="u9@a.example")
    assert throttle.charged(session, key=key, refill_seconds=100, now=at(10)) == 1
    # One unit drains per refill period: one more attempt after 60 s, then refused again.
    assert isinstance(reserve(session, "192.0.2.1", when=60), Ticket)
    assert reserve(session, "192.0.2.1", when=61) == Refused("address", 59)


@pytest.mark.parametrize(
    ("outcome", "admitted"),
    [
        # A failure keeps its charge: the budget of 3 admits 3 of 10 sequential attempts.
        (Outcome.FAILURE, 3),
        # A success or an unchecked attempt (database down) gives its charge back.
        (Outcome.SUCCESS, 10),
        (Outcome.UNCHECKED, 10),
    ],
)
def test_settling_keeps_or_returns_the_charge(
    session: Session, outcome: Outcome, admitted: int
) -> None:
    count = 0
    for i in range(10):
        ticket = reserve(session, "192.0.2.1", when=i)
        if isinstance(ticket, Ticket):
            count += 1
            settle(session, ticket, outcome, when=i)
    assert count == admitted


def test_success_never_resets_the_address_budget(session: Session) -> None:
    # An attacker with an account of their own cannot log in to reset the budget.
    for i in range(2):
        settle(session, reserve(session, "192.0.2.1", "victim@a.example"), Outcome.FAILURE)
    own = reserve(session, "192.0.2.1", "mallory@a.example")
    settle(session, own, Outcome.SUCCESS)
    assert isinstance(reserve(session, "192.0.2.1", "victim@a.example"), Ticket)
    assert isinstance(reserve(session, "192.0.2.1", "victim@a.example"), Refused)


def test_a_crashed_attempt_drains_like_a_failure(session: Session) -> None:
    for _ in range(3):
        assert isinstance(reserve(session, "192.0.2.1"), Ticket)  # never settled: crashed
    assert isinstance(reserve(session, "192.0.2.1", when=59), Refused)
    assert isinstance(reserve(session, "192.0.2.1", when=60), Ticket)


def test_pop3_and_smtp_share_budgets_the_portal_does_not(session: Session) -> None:
    for door in ("pop3", "smtp", "pop3"):
        assert isinstance(reserve(session, "192.0.2.1", door=door), Ticket)  # type: ignore[arg-type]
    assert isinstance(reserve(session, "192.0.2.1", door="smtp"), Refused)
    assert isinstance(reserve(session, "192.0.2.1", "alice", door="portal"), Ticket)


def test_ipv6_clients_share_the_budget_of_their_slash_64(session: Session) -> None:
    for host in (1, 2, 3):
        assert isinstance(reserve(session, f"2001:db8:0:1::{host}"), Ticket)
    assert isinstance(reserve(session, "2001:db8:0:1:ffff::9"), Refused)
    assert isinstance(reserve(session, "2001:db8:0:2::1"), Ticket)


def test_account_under_distributed_attack_admits_only_known_networks(session: Session) -> None:
    # The user logged in from home once.
    settle(session, reserve(session, "198.51.100.7", when=0), Outcome.SUCCESS)
    # A botnet: one guess from each of five addresses spends the account budget of 5.
    for bot in range(5):
        settle(session, reserve(session, f"203.0.113.{bot}", when=1), Outcome.FAILURE)
    refused = reserve(session, "203.0.113.99", when=2)
    assert refused == Refused("account", 99)
    # The user's home network is still let in (and still counted per address).
    home = reserve(session, "198.51.100.7", when=3)
    assert isinstance(home, Ticket)
    settle(session, home, Outcome.SUCCESS, when=3)
    # Another account is not affected.
    assert isinstance(reserve(session, "203.0.113.99", "bob@a.example", when=4), Ticket)
    # A network known longer ago than known_address_days no longer counts as known.
    later = 31 * 86400
    for bot in range(5):
        settle(session, reserve(session, f"203.0.113.{bot}", when=later), Outcome.FAILURE)
    assert reserve(session, "198.51.100.7", when=later) == Refused("account", 100)


def test_success_remembers_the_network_and_prunes_drained_rows(session: Session) -> None:
    settle(session, reserve(session, "192.0.2.1", "old@a.example", when=0), Outcome.FAILURE)
    settle(session, reserve(session, "192.0.2.9", "gone@a.example", when=0), Outcome.SUCCESS)
    later = POLICY.prune_after.total_seconds() + 1
    settle(session, reserve(session, "192.0.2.2", when=later), Outcome.SUCCESS, when=later)
    keys = set(session.scalars(select(LoginCounter.key)))
    assert keys == {"mail:ip:192.0.2.2", "mail:user:alice@a.example"}
    known = session.execute(select(LoginKnownAddress.account_key, LoginKnownAddress.network)).all()
    assert sorted(known) == [
        ("mail:user:alice@a.example", "192.0.2.2"),
        ("mail:user:gone@a.example", "192.0.2.9"),
    ]


# ------------------------------------------------------------------------------ races
@pytest.mark.parametrize("counter_exists", [False, True], ids=["new-counter", "old-counter"])
def test_parallel_reservations_in_separate_transactions_never_exceed_the_budget(
    session_factory: sessionmaker[Session], counter_exists: bool
) -> None:
    """Twelve threads, each with its own connection, reserve at the same moment."""
    policy = ThrottlePolicy(address_budget=4, account_budget=100)
    if counter_exists:  # a counter row at 0 (a success gave its charge back)
        with transaction(session_factory) as db:
            ticket = throttle.reserve(
                db, door="pop3", address="192.0.2.50", account="x@a.example", policy=policy
            )
        with transaction(session_factory) as db:
            assert isinstance(ticket, Ticket)
            throttle.settle(db, ticket=ticket, outcome=Outcome.SUCCESS, policy=policy)
    start = threading.Barrier(12)

    def attempt(i: int) -> bool:
        start.wait()
        with transaction(session_factory) as db:
            verdict = throttle.reserve(
                db, door="pop3", address="192.0.2.50", account=f"u{i}@a.example", policy=policy
            )
        return isinstance(verdict, Ticket)

    with ThreadPoolExecutor(max_workers=12) as pool:
        admitted = sum(pool.map(attempt, range(12)))
    assert admitted == 4
    with session_factory() as db:
        key = throttle.address_key(door="pop3", address="192.0.2.50")
        assert throttle.charged(db, key=key, refill_seconds=60, now=utcnow()) == 4
