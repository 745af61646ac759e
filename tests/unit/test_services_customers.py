"""Customer provisioning: validation, uniqueness, status, deletion with and without cascade."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.errors import ConflictError, NotFoundError, ValidationError
from app.models import AuditEntry, Customer, Domain, LifecycleEvent, Mailbox
from app.services import customers
from app.services.audit import CLI_ACTOR, Actor
from tests.factories import make_alias, make_customer, make_domain, make_mailbox


def _count(session: Session, model: type) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_create_customer_writes_row_and_audit(session: Session) -> None:
    actor = Actor("operator", "alice", "192.0.2.7")
    customer = customers.create_customer(
        session,
        actor=actor,
        name="  Acme   Widgets ",
        price_per_mailbox=Decimal("2.50"),
        currency="USD",
    )
    assert (customer.name, customer.price_per_mailbox, customer.currency, customer.status) == (
        "Acme Widgets",
        Decimal("2.50"),
        "USD",
        "active",
    )
    entry = session.scalars(select(AuditEntry)).one()
    assert (entry.actor_type, entry.actor, entry.action, entry.object_id, entry.remote_addr) == (
        "operator",
        "alice",
        "customer.create",
        str(customer.id),
        "192.0.2.7",
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"name": ""}, ValidationError, "name"),
        ({"name": "   "}, ValidationError, "name"),
        ({"name": "x" * 201}, ValidationError, "name"),
        ({"name": "Ok", "price_per_mailbox": Decimal("-1")}, ValidationError, "price_per_mailbox"),
        ({"name": "Ok", "price_per_mailbox": Decimal("NaN")}, ValidationError, "price_per_mailbox"),
        (
            {"name": "Ok", "price_per_mailbox": Decimal("1.00001")},
            ValidationError,
            "price_per_mailbox",
        ),
        ({"name": "Ok", "price_per_mailbox": Decimal("1e9")}, ValidationError, "price_per_mailbox"),
        ({"name": "Ok", "currency": "eur"}, ValidationError, "currency"),
        ({"name": "Ok", "currency": "EURO"}, ValidationError, "currency"),
        ({"name": "Ok", "currency": "€"}, ValidationError, "currency"),
        ({"name": "ACME"}, ConflictError, "name"),
        ({"name": "acme "}, ConflictError, "name"),
    ],
)
def test_create_customer_refuses_bad_input(
    session: Session, kwargs: dict[str, object], error: type[Exception], field: str
) -> None:
    make_customer(session, "Acme")
    with pytest.raises(error) as info:
        customers.create_customer(session, actor=CLI_ACTOR, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field  # type: ignore[attr-defined]
    assert info.value.message  # type: ignore[attr-defined]
    assert _count(session, Customer) == 1


def test_lookup_list_and_pagination(session: Session) -> None:
    ids = [make_customer(session, f"Customer {i:02d}").id for i in range(12)]
    assert customers.get_customer_by_name(session, name="customer 03").id == ids[3]
    with pytest.raises(NotFoundError):
        customers.get_customer_by_name(session, name="nobody")
    with pytest.raises(NotFoundError):
        customers.get_customer(session, customer_id=999_999)
    page1 = customers.list_customers(session, limit=5)
    page2 = customers.list_customers(session, after_id=page1[-1].id, limit=5)
    assert [c.id for c in page1 + page2] == ids[:10]
    assert [c.name for c in customers.list_customers(session, search="R 1")] == [
        f"Customer {i}" for i in range(10, 12)
    ]
    # LIKE wildcards in a search are literal characters.
    assert customers.list_customers(session, search="%") == []
    customers.set_customer_status(session, actor=CLI_ACTOR, customer_id=ids[0], status="suspended")
    assert [c.id for c in customers.list_customers(session, status="suspended")] == [ids[0]]
    with pytest.raises(ValidationError):
        customers.list_customers(session, status="gone")


def test_update_customer_and_status(session: Session) -> None:
    customer = make_customer(session, "Acme")
    make_customer(session, "Other")
    customers.update_customer(
        session,
        actor=CLI_ACTOR,
        customer_id=customer.id,
        name="Acme Two",
        price_per_mailbox=Decimal("3"),
        currency="GBP",
    )
    assert (customer.name, customer.price_per_mailbox, customer.currency) == (
        "Acme Two",
        Decimal("3"),
        "GBP",
    )
    with pytest.raises(ConflictError):
        customers.update_customer(session, actor=CLI_ACTOR, customer_id=customer.id, name="other")
    with pytest.raises(ValidationError):
        customers.set_customer_status(
            session, actor=CLI_ACTOR, customer_id=customer.id, status="deleted"
        )
    customers.set_customer_status(
        session, actor=CLI_ACTOR, customer_id=customer.id, status="suspended"
    )
    customers.set_customer_status(
        session, actor=CLI_ACTOR, customer_id=customer.id, status="suspended"
    )
    actions = session.scalars(
        select(AuditEntry.action)
        .where(AuditEntry.object_id == str(customer.id))
        .order_by(AuditEntry.id)
    ).all()
    assert actions == ["customer.create", "customer.update", "customer.suspend"]


def test_delete_customer_refused_while_it_has_domains(session: Session) -> None:
    customer = make_customer(session, "Acme")
    make_domain(session, "acme.example", customer)
    with pytest.raises(ConflictError) as info:
        customers.delete_customer(session, actor=CLI_ACTOR, customer_id=customer.id)
    assert "domain" in info.value.message
    assert _count(session, Customer) == 1


def test_delete_customer_cascade_records_every_deletion(session: Session) -> None:
    customer = make_customer(session, "Acme")
    make_domain(session, "a.example", customer)
    make_domain(session, "b.example", customer)
    make_mailbox(session, "one@a.example")
    make_mailbox(session, "two@b.example")
    make_alias(session, "list@a.example", ["one@a.example", "two@b.example"])
    session.commit()
    customers.delete_customer(session, actor=CLI_ACTOR, customer_id=customer.id, cascade=True)
    session.commit()
    assert (_count(session, Customer), _count(session, Domain), _count(session, Mailbox)) == (
        0,
        0,
        0,
    )
    deleted = session.execute(
        select(LifecycleEvent.entity, LifecycleEvent.address, LifecycleEvent.domain_name)
        .where(LifecycleEvent.action == "deleted")
        .order_by(LifecycleEvent.id)
    ).all()
    assert deleted == [
        ("mailbox", "one@a.example", "a.example"),
        ("domain", None, "a.example"),
        ("mailbox", "two@b.example", "b.example"),
        ("domain", None, "b.example"),
    ]


def test_failed_create_leaves_nothing_behind(session_factory: sessionmaker[Session]) -> None:
    with transaction(session_factory) as s:
        make_customer(s, "Acme")
    with pytest.raises(ConflictError), transaction(session_factory) as s:
        customers.create_customer(s, actor=CLI_ACTOR, name="Fresh")
        customers.create_customer(s, actor=CLI_ACTOR, name="ACME")
    with session_factory() as s:
        assert [c.name for c in customers.list_customers(s)] == ["Acme"]
        assert _count(s, AuditEntry) == 1
