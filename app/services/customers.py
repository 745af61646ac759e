"""Customers: the organisations billed per mailbox."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy.orm import Session

from app.models import Customer
from app.services.audit import Actor


def create_customer(
    session: Session,
    *,
    actor: Actor,
    name: str,
    price_per_mailbox: Decimal = Decimal("0"),
    currency: str = "EUR",
) -> Customer:
    """Validate (non-empty name <= 200 chars, unique case-insensitively; price >= 0; ISO 4217
    three upper-case letters) and add. Raises ValidationError / ConflictError."""
    raise NotImplementedError


def get_customer(session: Session, *, customer_id: int) -> Customer:
    """Raises NotFoundError."""
    raise NotImplementedError


def get_customer_by_name(session: Session, *, name: str) -> Customer:
    """Case-insensitive. Raises NotFoundError."""
    raise NotImplementedError


def list_customers(
    session: Session,
    *,
    search: str | None = None,
    status: str | None = None,
    after_id: int | None = None,
    limit: int = 50,
) -> list[Customer]:
    """Ordered by id; keyset pagination with ``after_id``; search is a substring of the name."""
    raise NotImplementedError


def update_customer(
    session: Session,
    *,
    actor: Actor,
    customer_id: int,
    name: str | None = None,
    price_per_mailbox: Decimal | None = None,
    currency: str | None = None,
) -> Customer:
    raise NotImplementedError


def set_customer_status(
    session: Session, *, actor: Actor, customer_id: int, status: str
) -> Customer:
    """'active' or 'suspended'. A suspended customer's domains receive no mail."""
    raise NotImplementedError


def delete_customer(
    session: Session, *, actor: Actor, customer_id: int, cascade: bool = False
) -> None:
    """Refused with ConflictError while it has domains, unless ``cascade`` (which deletes its
    domains, mailboxes and aliases, recording lifecycle events for each)."""
    raise NotImplementedError
