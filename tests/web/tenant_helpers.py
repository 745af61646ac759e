"""Two customers, each with a domain, a mailbox, an alias and an administrator; a client
logged in as the first customer's administrator."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.services import customer_admins, mailboxes
from tests.factories import DEFAULT_PASSWORD, make_alias, make_customer, make_domain, make_mailbox
from tests.web.portal_helpers import PortalClient


@dataclass(frozen=True)
class Tenant:
    customer_id: int
    domain_id: int
    mailbox_id: int
    alias_id: int
    admin_id: int
    admin: str
    domain: str
    token_id: int = 0  # an API token bound to the customer


def make_customer_admin(
    session: Session, customer_id: int, username: str, password: str = DEFAULT_PASSWORD
) -> int:
    from app.services.audit import CLI_ACTOR

    admin = customer_admins.create_customer_admin(
        session, actor=CLI_ACTOR, customer_id=customer_id, username=username, password=password
    )
    return admin.id


def make_tenant(factory: sessionmaker[Session], name: str, domain: str) -> Tenant:
    with transaction(factory) as session:
        customer = make_customer(session, name.title())
        dom = make_domain(session, domain, customer=customer, max_mailboxes=5)
        mailbox = make_mailbox(session, f"staff@{domain}")
        alias = make_alias(session, f"info@{domain}", [f"staff@{domain}"])
        admin_id = make_customer_admin(session, customer.id, f"{name}-admin")
        admin = customer_admins.get_customer_admin(session, admin_id=admin_id)
        # One audit entry by the customer's own administrator (their audit view shows it).
        mailboxes.set_mailbox_status(
            session,
            actor=customer_admins.actor_of(admin, "127.0.0.1"),
            mailbox_id=mailbox.id,
            status="suspended",
        )
        from app.services import accounts
        from app.services.audit import CLI_ACTOR

        token, _ = accounts.create_token(
            session, actor=CLI_ACTOR, name=f"{name}-tool", scopes=["read"], customer_id=customer.id
        )
        return Tenant(
            customer.id, dom.id, mailbox.id, alias.id, admin_id, admin.username, domain, token.id
        )


def login_customer_admin(client: TestClient, username: str) -> PortalClient:
    portal = PortalClient(client)
    response = portal.login(username)
    assert response.status_code == 303, response.text
    return portal


@pytest.fixture
def tenants(portal_app: Any) -> tuple[Tenant, Tenant]:
    factory = portal_app.state.session_factory
    return make_tenant(factory, "acme", "acme.example"), make_tenant(
        factory, "globex", "globex.example"
    )


@pytest.fixture
def acme(portal_app: Any, tenants: tuple[Tenant, Tenant]) -> Iterator[PortalClient]:
    with TestClient(portal_app) as client:
        yield login_customer_admin(client, tenants[0].admin)


@pytest.fixture
def customer_admin(portal_app: Any) -> Iterator[PortalClient]:
    """A customer administrator (of "Initech") logged in: the client for ``/my`` pages."""
    tenant = make_tenant(portal_app.state.session_factory, "initech", "initech.example")
    with TestClient(portal_app) as client:
        yield login_customer_admin(client, tenant.admin)
