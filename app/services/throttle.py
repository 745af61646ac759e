"""The login throttle every password door uses: budgets per client network and per account.

Theory of operation
-------------------
Each door (``pop3``, ``smtp`` for SMTP AUTH, ``portal``) calls :func:`reserve` before it
checks a password and :func:`settle` after. Doors that guard the same accounts share one
*realm*: POP3 and SMTP AUTH both check mailbox passwords, so both count against ``mail:``
keys and a stolen password cannot be guessed faster by using both doors.

A budget is a leaky bucket in one database row (:class:`app.models.LoginCounter`), so every
process and host sees the same numbers. ``charged`` counts failed attempts *and attempts in
flight*: :func:`reserve` charges one unit to the client network's row and one to the
account's row *before* the password is checked, in one transaction that holds both rows
locked, and refuses at once (charging nothing) when a budget is spent. So sixty parallel
guesses cannot all pass the check before the first failure is recorded: the eleventh finds
ten units charged. :func:`settle` turns the charge into what happened: a failure keeps it, a
success or an attempt the server could not check gives it back. A process that dies between
the two leaves its charge in place, where it drains like a failure: a reservation expires
after one refill period per unit, it never leaks budget forever and never admits extra
guesses.

One unit drains every refill period (``drained_at`` keeps the remainder, so the arithmetic
is exact in integers). A refused attempt charges nothing, so a client that keeps hammering
while over budget gets its next try as soon as a unit drains, and never a longer ban.

Who is refused
--------------
* The client network (an IPv4 address, an IPv6 /64 since one host gets a whole /64): over
  its budget, every login from it is refused, whatever account it names. Dovecot's auth
  penalty is per client IP for the same reason: another user's correct login from another
  address never waits for an attacker's penalty.
* The account: over its budget (guesses from many networks, a botnet), a login is refused
  only from networks that never logged in to it successfully in the last
  ``known_address_days`` (:class:`app.models.LoginKnownAddress`). Locking the account for
  everyone would let any botnet lock a user out of their mail; exempting the networks the
  user logs in from keeps their mail flowing while the guessers are refused.

Success never clears a budget: it gives back only its own charge. Otherwise an attacker with
one valid account of their own could reset their address's budget between guesses.

The services do not commit, like all services; but a reservation only works once other
processes can see it, so the edge commits :func:`reserve`'s transaction before it checks the
password, and :func:`reserve` must be the first statement of that transaction on SQLite (its
first write takes SQLite's write lock, which serialises reservations across processes; on
PostgreSQL the rows are locked with ``SELECT ... FOR UPDATE``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import ipaddress
import math
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app import metrics
from app.config import Settings
from app.errors import TemporaryError, ValidationError
from app.models import LoginCounter, LoginKnownAddress, utcnow
from app.services.addresses import normalise_address

Door = Literal["pop3", "smtp", "portal"]
# Doors that check the same passwords share their budgets (see the module docstring).
REALMS: dict[str, str] = {"pop3": "mail", "smtp": "mail", "portal": "portal"}
# Bounds a key made from a client-supplied user name (the column holds 400 characters).
MAX_ACCOUNT_KEY = 300
# A charge never grows past this many budgets: bounds how long a row needs to drain, so
# old rows can be pruned without losing a live penalty.
MAX_CHARGE_BUDGETS = 2


@dataclass(frozen=True, slots=True)
class ThrottlePolicy:
    """Budgets and refill periods; see Settings.login_* for the meaning of each."""

    address_budget: int = 10
    address_refill_seconds: float = 60.0
    account_budget: int = 30
    account_refill_seconds: float = 120.0
    known_address_days: int = 30

    @classmethod
    def from_settings(cls, settings: Settings) -> ThrottlePolicy:
        return cls(
            address_budget=settings.login_address_budget,
            address_refill_seconds=settings.login_address_refill_seconds,
            account_budget=settings.login_account_budget,
            account_refill_seconds=settings.login_account_refill_seconds,
            known_address_days=settings.login_known_address_days,
        )

    @property
    def prune_after(self) -> dt.timedelta:
        """A row untouched this long has drained completely (charges are capped)."""
        longest = max(
            self.address_budget * self.address_refill_seconds,
            self.account_budget * self.account_refill_seconds,
        )
        return dt.timedelta(seconds=MAX_CHARGE_BUDGETS * longest + 3600)


@dataclass(frozen=True, slots=True)
class Ticket:
    """A reservation: one unit charged to each key until :func:`settle` says what happened."""

    address_key: str
    account_key: str
    network: str


@dataclass(frozen=True, slots=True)
class Refused:
    """Over budget: answer at once without checking the password, and say when to retry."""

    reason: Literal["address", "account"]
    retry_after: int  # whole seconds until a unit drains (at least 1)


class Outcome(enum.Enum):
    SUCCESS = "success"  # the password matched: the charge is given back, the network known
    FAILURE = "failure"  # wrong password, unknown user, disabled account: the charge stays
    UNCHECKED = "unchecked"  # server-side failure, no verdict reached: the charge is given back


def client_network(address: str | None) -> str:
    """The unit a client is counted by: the IPv4 address, or the /64 of an IPv6 address
    (RFC 4291 section 2.5.4: one interface gets a /64, so an attacker owns 2**64 addresses)."""
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def account_key(*, door: Door, account: str) -> str:
    """The account's budget key. Mail accounts are normalised like mailbox lookups (case,
    IDNA), so 'Alice@A.EXAMPLE' and 'alice@a.example' spend one budget."""
    realm = _realm(door)
    name = account.strip().lower()
    if realm == "mail":
        # Not an address: it opens no mailbox, but still has a budget.
        with contextlib.suppress(ValidationError):
            name = normalise_address(name)
    # ascii() escapes control characters and surrogates a client may send.
    return f"{realm}:user:{ascii(name)[1:-1][:MAX_ACCOUNT_KEY]}"


def address_key(*, door: Door, address: str | None) -> str:
    return f"{_realm(door)}:ip:{client_network(address)}"


def _realm(door: str) -> str:
    realm = REALMS.get(door)
    if realm is None:
        raise ValidationError(f"unknown login door {door!r}", field="door")
    return realm


def reserve(
    session: Session,
    *,
    door: Door,
    address: str | None,
    account: str,
    policy: ThrottlePolicy,
    now: dt.datetime | None = None,
) -> Ticket | Refused:
    """Charge one attempt to the client network and the account, or refuse at once.

    Must be the first statement of its transaction, and the edge commits it before checking
    the password (see the module docstring)."""
    moment = now or utcnow()
    ticket = Ticket(
        address_key=address_key(door=door, address=address),
        account_key=account_key(door=door, account=account),
        network=client_network(address),
    )
    # Always the network's row first, then the account's: one order everywhere, so two
    # transactions never wait for each other's rows (no deadlock on PostgreSQL).
    by_address = _locked(session, ticket.address_key, moment)
    _drain(by_address, moment, policy.address_refill_seconds)
    if by_address.charged >= policy.address_budget:
        metrics.login_throttled(door, "address")
        return Refused(
            "address",
            _retry_after(by_address, moment, policy.address_budget, policy.address_refill_seconds),
        )
    by_account = _locked(session, ticket.account_key, moment)
    _drain(by_account, moment, policy.account_refill_seconds)
    if by_account.charged >= policy.account_budget and not _known(
        session, ticket=ticket, moment=moment, policy=policy
    ):
        metrics.login_throttled(door, "account")
        return Refused(
            "account",
            _retry_after(by_account, moment, policy.account_budget, policy.account_refill_seconds),
        )
    by_address.charged = min(by_address.charged + 1, MAX_CHARGE_BUDGETS * policy.address_budget)
    by_account.charged = min(by_account.charged + 1, MAX_CHARGE_BUDGETS * policy.account_budget)
    session.flush()
    return ticket


def settle(
    session: Session,
    *,
    ticket: Ticket,
    outcome: Outcome,
    policy: ThrottlePolicy,
    now: dt.datetime | None = None,
) -> None:
    """Turn a reservation into what happened (see :class:`Outcome`). A FAILURE writes
    nothing: the charge :func:`reserve` made is the failure."""
    if outcome is Outcome.FAILURE:
        return
    moment = now or utcnow()
    for key, refill in (
        (ticket.address_key, policy.address_refill_seconds),
        (ticket.account_key, policy.account_refill_seconds),
    ):
        row = _locked(session, key, moment)
        _drain(row, moment, refill)
        row.charged = max(0, row.charged - 1)
    if outcome is Outcome.SUCCESS:
        _remember(session, ticket=ticket, moment=moment)
        _prune(session, moment=moment, policy=policy)
    session.flush()


def charged(session: Session, *, key: str, refill_seconds: float, now: dt.datetime) -> int:
    """The units charged to ``key`` at ``now`` (for tests and the operator's eyes)."""
    row = session.execute(
        select(LoginCounter.charged, LoginCounter.drained_at).where(LoginCounter.key == key)
    ).one_or_none()
    if row is None:
        return 0
    return drained(row.charged, row.drained_at, now, refill_seconds)[0]


# ------------------------------------------------------------------------------ internals
def _insert_ignore(session: Session, key: str, moment: dt.datetime) -> None:
    values = {"key": key, "charged": 0, "drained_at": moment}
    if session.get_bind().dialect.name == "postgresql":
        session.execute(postgresql.insert(LoginCounter).values(values).on_conflict_do_nothing())
    else:
        session.execute(sqlite.insert(LoginCounter).values(values).on_conflict_do_nothing())


def _locked(session: Session, key: str, moment: dt.datetime) -> LoginCounter:
    """The counter row of ``key``, created if missing, locked until the transaction ends.

    The INSERT comes first on purpose: on SQLite a write statement takes the database's write
    lock, so the read below cannot be stale; on PostgreSQL the row is then locked with FOR
    UPDATE. A row pruned by another transaction between the two is simply inserted again."""
    for _ in range(3):
        _insert_ignore(session, key, moment)
        row = session.scalars(
            select(LoginCounter)
            .where(LoginCounter.key == key)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).one_or_none()
        if row is not None:
            return row
    raise TemporaryError("the login throttle could not lock its counter, try again later")


def drained(
    charged: int, drained_at: dt.datetime, moment: dt.datetime, refill_seconds: float
) -> tuple[int, dt.datetime]:
    """(charged, drained_at) after applying the whole refill periods since ``drained_at``."""
    if charged <= 0:
        return 0, moment
    elapsed = (moment - drained_at).total_seconds()
    if elapsed <= 0:  # a clock that went back drains nothing, and never adds
        return charged, drained_at
    periods = int(elapsed // refill_seconds)
    if periods >= charged:
        return 0, moment
    return charged - periods, drained_at + dt.timedelta(seconds=periods * refill_seconds)


def _drain(row: LoginCounter, moment: dt.datetime, refill_seconds: float) -> None:
    charged, drained_at = drained(row.charged, row.drained_at, moment, refill_seconds)
    if (charged, drained_at) != (row.charged, row.drained_at):
        row.charged, row.drained_at = charged, drained_at


def _retry_after(row: LoginCounter, moment: dt.datetime, budget: int, refill: float) -> int:
    """Seconds until the row is back under its budget (after ``_drain``)."""
    units = row.charged - budget + 1
    into_period = max(0.0, (moment - row.drained_at).total_seconds())
    return max(1, math.ceil(units * refill - into_period))


def _known(
    session: Session, *, ticket: Ticket, moment: dt.datetime, policy: ThrottlePolicy
) -> bool:
    if ticket.network == "unknown":
        return False
    last = session.scalar(
        select(LoginKnownAddress.last_success_at).where(
            LoginKnownAddress.account_key == ticket.account_key,
            LoginKnownAddress.network == ticket.network,
        )
    )
    return last is not None and moment - last < dt.timedelta(days=policy.known_address_days)


def _remember(session: Session, *, ticket: Ticket, moment: dt.datetime) -> None:
    if ticket.network == "unknown":
        return
    values = {
        "account_key": ticket.account_key,
        "network": ticket.network,
        "last_success_at": moment,
    }
    index = [LoginKnownAddress.account_key, LoginKnownAddress.network]
    if session.get_bind().dialect.name == "postgresql":
        pg = postgresql.insert(LoginKnownAddress).values(values)
        session.execute(
            pg.on_conflict_do_update(
                index_elements=index, set_={"last_success_at": pg.excluded.last_success_at}
            )
        )
    else:
        lite = sqlite.insert(LoginKnownAddress).values(values)
        session.execute(
            lite.on_conflict_do_update(
                index_elements=index, set_={"last_success_at": lite.excluded.last_success_at}
            )
        )


def _prune(session: Session, *, moment: dt.datetime, policy: ThrottlePolicy) -> None:
    """Forget rows that have drained completely and networks not seen for too long (both
    indexed range deletes; usually nothing to delete). Run on successful logins, which
    arrive steadily on any live system, so no separate job is needed."""
    session.execute(
        delete(LoginCounter).where(LoginCounter.drained_at < moment - policy.prune_after),
        execution_options={"synchronize_session": False},
    )
    session.execute(
        delete(LoginKnownAddress).where(
            LoginKnownAddress.last_success_at
            < moment - dt.timedelta(days=policy.known_address_days)
        ),
        execution_options={"synchronize_session": False},
    )
