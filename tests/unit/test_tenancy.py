"""Tenant isolation in the service layer (app/services/tenancy.py): a customer actor's lookups
of another customer's objects are "not found", its list filter is its own customer, and the
ISP-only changes are refused."""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.errors import NotFoundError, PermissionDeniedError
from app.services import aliases, customer_admins, customers, domains, mailboxes, tenancy
from app.services.audit import CLI_ACTOR, Actor
from tests.factories import make_alias, make_customer, make_domain, make_mailbox


def _seed(factory: sessionmaker[Session]) -> dict[str, int]:
    with transaction(factory) as s:
        a = make_customer(s, "A")
        b = make_customer(s, "B")
        make_domain(s, "a.example", customer=a)
        db = make_domain(s, "b.example", customer=b)
        mb = make_mailbox(s, "x@b.example")
        al = make_alias(s, "y@b.example", ["x@b.example"])
        adm = customer_admins.create_customer_admin(
            s, actor=CLI_ACTOR, customer_id=b.id, username="b-admin", password="long enough"
        )
        return {
            "a": a.id,
            "b": b.id,
            "domain": db.id,
            "mailbox": mb.id,
            "alias": al.id,
            "admin": adm.id,
        }


def test_a_customer_actor_finds_nothing_of_another_customer(
    session_factory: sessionmaker[Session],
) -> None:
    ids = _seed(session_factory)
    actor = Actor("customer_admin", "a-admin", None, customer_id=ids["a"])
    own_b = Actor("customer_admin", "b-admin", None, customer_id=ids["b"])
    lookups = [
        lambda s, who: mailboxes.get_mailbox(s, mailbox_id=ids["mailbox"], actor=who),
        lambda s, who: mailboxes.set_mailbox_status(
            s, actor=who, mailbox_id=ids["mailbox"], status="suspended"
        ),
        lambda s, who: mailboxes.set_password(
            s, actor=who, mailbox_id=ids["mailbox"], password="long enough"
        ),
        lambda s, who: mailboxes.delete_mailbox(s, actor=who, mailbox_id=ids["mailbox"]),
        lambda s, who: mailboxes.create_mailbox(
            s, actor=who, address="new@b.example", password="long enough"
        ),
        lambda s, who: aliases.get_alias(s, alias_id=ids["alias"], actor=who),
        lambda s, who: aliases.delete_alias(s, actor=who, alias_id=ids["alias"]),
        lambda s, who: aliases.create_alias(
            s, actor=who, address="z@b.example", targets=["x@b.example"]
        ),
        lambda s, who: domains.get_domain(s, domain_id=ids["domain"], actor=who),
        lambda s, who: domains.get_domain_by_name(s, name="b.example", actor=who),
        lambda s, who: customers.get_customer(s, customer_id=ids["b"], actor=who),
        lambda s, who: customer_admins.get_customer_admin(s, admin_id=ids["admin"], actor=who),
        lambda s, who: customer_admins.delete_customer_admin(s, actor=who, admin_id=ids["admin"]),
    ]
    for lookup in lookups:
        with session_factory() as s:
            with pytest.raises(NotFoundError) as foreign:
                lookup(s, actor)
            s.rollback()
        # The same message as for an id that names nothing: nothing is confirmed.
        assert "b-admin" not in foreign.value.message
    with session_factory() as s:  # B's own administrator finds them
        assert mailboxes.get_mailbox(s, mailbox_id=ids["mailbox"], actor=own_b).id == ids["mailbox"]
        assert aliases.get_alias(s, alias_id=ids["alias"], actor=own_b).id == ids["alias"]


def test_list_scope_and_staff_only_changes(session_factory: sessionmaker[Session]) -> None:
    ids = _seed(session_factory)
    actor = Actor("customer_admin", "b-admin", None, customer_id=ids["b"])
    assert tenancy.customer_scope(actor) == ids["b"]
    assert tenancy.customer_scope(CLI_ACTOR, ids["a"]) == ids["a"]
    with pytest.raises(NotFoundError):
        tenancy.customer_scope(actor, ids["a"])
    with session_factory() as s:  # closed: an open transaction would block PostgreSQL
        other = Actor("customer_admin", "x", None, customer_id=ids["a"])
        assert customer_admins.list_customer_admins(s, actor=other) == []
    refused = [
        lambda s: domains.create_domain(s, actor=actor, customer_id=ids["b"], name="c.example"),
        lambda s: domains.set_domain_status(
            s, actor=actor, domain_id=ids["domain"], status="suspended"
        ),
        lambda s: domains.set_catchall(s, actor=actor, domain_id=ids["domain"], target=None),
        lambda s: customers.update_customer(s, actor=actor, customer_id=ids["b"], name="Z"),
        lambda s: customers.set_customer_status(
            s, actor=actor, customer_id=ids["b"], status="suspended"
        ),
        lambda s: customers.create_customer(s, actor=actor, name="New"),
    ]
    for change in refused:
        with session_factory() as s, pytest.raises(PermissionDeniedError):
            change(s)
