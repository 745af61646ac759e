"""A customer administrator sees their relay domains' recipients (issue 15: "relay-domain
recipients"), read-only: the ISP manages relay domains. Another customer's relay domain is
404 on the page and in the service, like any foreign id."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.errors import NotFoundError, PermissionDeniedError
from app.services import customer_admins, relay, relay_recipients
from app.services.audit import CLI_ACTOR
from tests.web.portal_helpers import PortalClient, portal_app  # noqa: F401
from tests.web.tenant_helpers import Tenant, acme, tenants  # noqa: F401


def _relay_domain(factory: sessionmaker[Session], customer_id: int, name: str) -> int:
    with transaction(factory) as s:
        domain = relay.create_relay_domain(
            s, actor=CLI_ACTOR, customer_id=customer_id, name=name, next_hop="mx.office.test:25"
        )
        for address in ("anna", "bert", "carla"):
            relay_recipients.add_recipient(s, actor=CLI_ACTOR, domain_id=domain.id, address=address)
        return domain.id


def test_customer_admin_sees_own_relay_recipients_and_not_anothers(
    acme: PortalClient,  # noqa: F811
    tenants: tuple[Tenant, Tenant],  # noqa: F811
    portal_app: Any,  # noqa: F811
) -> None:
    a, b = tenants
    factory = portal_app.state.session_factory
    own = _relay_domain(factory, a.customer_id, "shop-acme.example")
    foreign = _relay_domain(factory, b.customer_id, "shop-globex.example")

    home = acme.get("/my").text
    assert f'href="/my/domains/{own}"' in home and "shop-globex" not in home
    page = acme.get(f"/my/domains/{own}")
    assert page.status_code == 200
    assert '<span id="recipient-count">3</span>' in page.text
    for name in ("anna", "bert", "carla"):
        assert f"{name}@shop-acme.example" in page.text
    assert "mx.office.test:25" in page.text
    assert "/relay/" not in page.text  # no ISP forms: nothing to change here
    found = acme.get(f"/my/domains/{own}?q=ber").text
    assert "bert@shop-acme.example" in found and "anna@" not in found

    other = acme.get(f"/my/domains/{foreign}")
    assert other.status_code == 404 and "shop-globex" not in other.text
    assert acme.get(f"/relay/{own}").status_code == 404  # the ISP's page stays closed

    with factory() as s:
        admin = customer_admins.get_customer_admin(s, admin_id=a.admin_id)
        actor = customer_admins.actor_of(admin, "127.0.0.1")
        assert len(relay_recipients.list_recipients(s, domain_id=own, actor=actor)) == 3
        with pytest.raises(NotFoundError):
            relay_recipients.list_recipients(s, domain_id=foreign, actor=actor)
        with pytest.raises(PermissionDeniedError):  # seeing, never changing
            relay_recipients.add_recipient(s, actor=actor, domain_id=own, address="dora")
