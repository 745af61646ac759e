"""Small builders for tests: real service calls as the CLI actor, flushed but not committed."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.models import Alias, Customer, Domain, Mailbox, Operator
from app.services import accounts, aliases, customers, domains, mailboxes
from app.services.addresses import split_address
from app.services.audit import CLI_ACTOR

DEFAULT_PASSWORD = "correct horse"


def make_customer(
    session: Session,
    name: str = "Example Ltd",
    *,
    price: Decimal | str = Decimal("2.50"),
    currency: str = "EUR",
) -> Customer:
    customer = customers.create_customer(
        session,
        actor=CLI_ACTOR,
        name=name,
        price_per_mailbox=Decimal(price),
        currency=currency,
    )
    session.flush()
    return customer


def make_domain(
    session: Session,
    name: str = "hosted.example",
    customer: Customer | None = None,
    *,
    max_mailboxes: int | None = None,
    default_quota_bytes: int | None = None,
    total_quota_bytes: int | None = None,
) -> Domain:
    """A domain; when no customer is given, one named after the domain is used (or made)."""
    if customer is None:
        from app.errors import NotFoundError

        try:
            customer = customers.get_customer_by_name(session, name=f"Customer of {name}")
        except NotFoundError:
            customer = make_customer(session, name=f"Customer of {name}")
    domain = domains.create_domain(
        session,
        actor=CLI_ACTOR,
        customer_id=customer.id,
        name=name,
        max_mailboxes=max_mailboxes,
        default_quota_bytes=default_quota_bytes,
        total_quota_bytes=total_quota_bytes,
    )
    session.flush()
    return domain


def _domain_for(session: Session, address: str) -> Domain:
    """The address's domain, created (with its own customer) if it is not hosted yet."""
    from app.errors import NotFoundError

    _, domain_name = split_address(address)
    try:
        return domains.get_domain_by_name(session, name=domain_name)
    except NotFoundError:
        return make_domain(session, domain_name)


def make_mailbox(
    session: Session,
    address: str = "user@hosted.example",
    *,
    password: str = DEFAULT_PASSWORD,
    password_hash: str | None = None,
    quota: int | None = None,
    pop3_enabled: bool = True,
) -> Mailbox:
    """A mailbox; its domain (and customer) are created if missing."""
    _domain_for(session, address)
    mailbox = mailboxes.create_mailbox(
        session,
        actor=CLI_ACTOR,
        address=address,
        password=None if password_hash is not None else password,
        password_hash=password_hash,
        quota_bytes=quota,
        pop3_enabled=pop3_enabled,
    )
    session.flush()
    return mailbox


def make_alias(session: Session, address: str, targets: Sequence[str]) -> Alias:
    """An alias; its domain is created if missing (targets must exist already)."""
    _domain_for(session, address)
    alias = aliases.create_alias(session, actor=CLI_ACTOR, address=address, targets=targets)
    session.flush()
    return alias


def make_operator(
    session: Session,
    username: str = "admin",
    *,
    password: str = DEFAULT_PASSWORD,
    role: str = "admin",
) -> Operator:
    operator = accounts.create_operator(
        session, actor=CLI_ACTOR, username=username, password=password, role=role
    )
    session.flush()
    return operator


def seed_mailbox(
    session_factory: sessionmaker[Session],
    address: str = "user@hosted.example",
    password: str = DEFAULT_PASSWORD,
    *,
    quota: int | None = None,
) -> int:
    """Create and COMMIT a mailbox (for tests that run a real server); returns its id."""
    with transaction(session_factory) as session:
        return make_mailbox(session, address, password=password, quota=quota).id
