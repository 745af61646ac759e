"""Customers: the organisations billed per mailbox."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import ConflictError, NotFoundError, ValidationError
from app.models import Customer, Domain
from app.services.audit import Actor, audit
from app.services.common import check_status, flush_or_conflict
from app.services.domains import delete_domain
from app.services.tenancy import check_visible, isp_only, staff_only

MAX_NAME = 200
_CURRENCY = re.compile(r"^[A-Z]{3}$")
# Numeric(12, 4) holds at most 8 integer digits.
_MAX_PRICE = Decimal("99999999.9999")


def _clean_name(name: str) -> str:
    cleaned = " ".join(name.split())
    if not cleaned:
        raise ValidationError("customer name is empty", field="name")
    if len(cleaned) > MAX_NAME:
        raise ValidationError(f"customer name is longer than {MAX_NAME} characters", field="name")
    return cleaned


def _clean_price(
    price: Decimal | str | int, *, field: str = "price_per_mailbox", what: str = "mailbox"
) -> Decimal:
    try:
        value = Decimal(price)
    except (InvalidOperation, TypeError, ValueError) as exc:
        raise ValidationError(f"invalid price {price!r}", field=field) from exc
    if not value.is_finite() or value < 0 or value > _MAX_PRICE:
        raise ValidationError(f"price per {what} must be between 0 and {_MAX_PRICE}", field=field)
    if value != value.quantize(Decimal("0.0001")):
        raise ValidationError("price has more than 4 decimal places", field=field)
    return value


def _clean_relay_price(price: Decimal | str | int) -> Decimal:
    return _clean_price(price, field="price_per_relay_domain", what="relay domain")


def _clean_currency(currency: str) -> str:
    if not _CURRENCY.match(currency):
        raise ValidationError(
            f"currency {currency!r} is not an ISO 4217 code (three upper-case letters)",
            field="currency",
        )
    return currency


def _name_taken(session: Session, name: str, *, exclude_id: int | None = None) -> bool:
    query = select(Customer.id).where(func.lower(Customer.name) == name.lower())
    if exclude_id is not None:
        query = query.where(Customer.id != exclude_id)
    return session.scalar(query.limit(1)) is not None


def create_customer(
    session: Session,
    *,
    actor: Actor,
    name: str,
    price_per_mailbox: Decimal = Decimal("0"),
    currency: str = "EUR",
    price_per_relay_domain: Decimal = Decimal("0"),
) -> Customer:
    """Validate (non-empty name <= 200 chars, unique case-insensitively; prices >= 0; ISO 4217
    three upper-case letters) and add. Raises ValidationError / ConflictError."""
    staff_only(actor, "create customers")
    clean = _clean_name(name)
    price = _clean_price(price_per_mailbox)
    relay_price = _clean_relay_price(price_per_relay_domain)
    cur = _clean_currency(currency)
    if _name_taken(session, clean):
        raise ConflictError(f"customer {clean!r} already exists", field="name")
    customer = Customer(
        name=clean,
        price_per_mailbox=price,
        price_per_relay_domain=relay_price,
        currency=cur,
        status="active",
    )
    session.add(customer)
    flush_or_conflict(session, f"customer {clean!r} already exists", field="name")
    audit(
        session,
        actor=actor,
        action="customer.create",
        object_type="customer",
        object_id=customer.id,
        object_name=customer.name,
        detail=f"price={price} {cur}" + (f" relay_price={relay_price}" if relay_price else ""),
    )
    return customer


def get_customer(session: Session, *, customer_id: int, actor: Actor | None = None) -> Customer:
    """Raises NotFoundError, also for a customer other than the actor's own (``tenancy``)."""
    customer = session.get(Customer, customer_id)
    message = f"no customer with id {customer_id}"
    if customer is None:
        raise NotFoundError(message, field="customer_id")
    check_visible(actor, customer.id, message=message, field="customer_id")
    return customer


def get_customer_by_name(session: Session, *, name: str) -> Customer:
    """Case-insensitive. Raises NotFoundError."""
    clean = " ".join(name.split())
    customer = session.scalar(
        select(Customer).where(func.lower(Customer.name) == clean.lower()).limit(1)
    )
    if customer is None:
        raise NotFoundError(f"no customer named {clean!r}", field="customer")
    return customer


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@isp_only("list customers")
def list_customers(
    session: Session,
    *,
    actor: Actor | None = None,
    search: str | None = None,
    status: str | None = None,
    after_id: int | None = None,
    limit: int = 50,
) -> list[Customer]:
    """Ordered by id; keyset pagination with ``after_id``; search is a substring of the name."""
    query = select(Customer).order_by(Customer.id)
    if search:
        pattern = f"%{_escape_like(search.lower())}%"
        query = query.where(func.lower(Customer.name).like(pattern, escape="\\"))
    if status is not None:
        query = query.where(Customer.status == check_status(status))
    if after_id is not None:
        query = query.where(Customer.id > after_id)
    return list(session.scalars(query.limit(max(0, limit))))


def update_customer(
    session: Session,
    *,
    actor: Actor,
    customer_id: int,
    name: str | None = None,
    price_per_mailbox: Decimal | None = None,
    currency: str | None = None,
    price_per_relay_domain: Decimal | None = None,
) -> Customer:
    staff_only(actor, "change customers")
    customer = get_customer(session, customer_id=customer_id, actor=actor)
    changes: list[str] = []
    if name is not None:
        clean = _clean_name(name)
        if clean != customer.name:
            if _name_taken(session, clean, exclude_id=customer.id):
                raise ConflictError(f"customer {clean!r} already exists", field="name")
            changes.append(f"name: {customer.name!r} -> {clean!r}")
            customer.name = clean
    if price_per_mailbox is not None:
        price = _clean_price(price_per_mailbox)
        if price != customer.price_per_mailbox:
            changes.append(f"price: {customer.price_per_mailbox} -> {price}")
            customer.price_per_mailbox = price
    if price_per_relay_domain is not None:
        relay_price = _clean_relay_price(price_per_relay_domain)
        if relay_price != customer.price_per_relay_domain:
            changes.append(f"relay price: {customer.price_per_relay_domain} -> {relay_price}")
            customer.price_per_relay_domain = relay_price
    if currency is not None:
        cur = _clean_currency(currency)
        if cur != customer.currency:
            changes.append(f"currency: {customer.currency} -> {cur}")
            customer.currency = cur
    if changes:
        session.flush()
        audit(
            session,
            actor=actor,
            action="customer.update",
            object_type="customer",
            object_id=customer.id,
            object_name=customer.name,
            detail="; ".join(changes),
        )
    return customer


def set_customer_status(
    session: Session, *, actor: Actor, customer_id: int, status: str
) -> Customer:
    """'active' or 'suspended'. A suspended customer's domains receive no mail."""
    check_status(status)
    staff_only(actor, "change customers")
    customer = get_customer(session, customer_id=customer_id, actor=actor)
    if customer.status != status:
        customer.status = status
        session.flush()
        audit(
            session,
            actor=actor,
            action="customer.suspend" if status == "suspended" else "customer.resume",
            object_type="customer",
            object_id=customer.id,
            object_name=customer.name,
        )
    return customer


def delete_customer(
    session: Session, *, actor: Actor, customer_id: int, cascade: bool = False
) -> None:
    """Refused with ConflictError while it has domains, unless ``cascade`` (which deletes its
    domains, mailboxes and aliases, recording lifecycle events for each, and removes alias
    targets and catch-alls anywhere that named their addresses; see ``delete_domain``)."""
    staff_only(actor, "change customers")
    customer = get_customer(session, customer_id=customer_id, actor=actor)
    domain_ids = list(
        session.scalars(
            select(Domain.id).where(Domain.customer_id == customer.id).order_by(Domain.id)
        )
    )
    if domain_ids and not cascade:
        raise ConflictError(
            f"customer {customer.name!r} still has {len(domain_ids)} domain(s); "
            "delete them first or cascade",
            field="customer_id",
        )
    for domain_id in domain_ids:
        delete_domain(session, actor=actor, domain_id=domain_id, cascade=True)
    audit(
        session,
        actor=actor,
        action="customer.delete",
        object_type="customer",
        object_id=customer.id,
        object_name=customer.name,
        detail=f"cascade, {len(domain_ids)} domain(s)" if domain_ids else None,
    )
    session.delete(customer)
    session.flush()
