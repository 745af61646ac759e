"""Customer administrators (issue 15): created by operators (portal, API) and by each other,
they manage their customer's mailboxes and aliases within the ISP's limits, see the same
billing numbers as the billing API, and everything they do is audited under their name."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db import transaction
from app.models import AuditEntry
from tests.web.api_helpers import Api, api_fixture, assert_problem  # noqa: F401
from tests.web.portal_helpers import PortalClient, admin, portal_app, support  # noqa: F401
from tests.web.tenant_helpers import Tenant, acme, login_customer_admin, tenants  # noqa: F401


def test_operator_creates_a_customer_admin_in_the_portal_who_then_logs_in(
    admin: PortalClient,  # noqa: F811
    support: PortalClient,  # noqa: F811
    tenants: tuple[Tenant, Tenant],  # noqa: F811
    portal_app: Any,  # noqa: F811
) -> None:
    a, _ = tenants
    page = admin.get(f"/customers/{a.customer_id}")
    assert f'href="/customers/{a.customer_id}/admins"' in page.text
    bad = admin.post(
        f"/customers/{a.customer_id}/admins/new", {"username": "Bad Name!", "password": "x"}
    )
    assert bad.status_code == 422 and "username must be" in bad.text
    taken = admin.post(
        f"/customers/{a.customer_id}/admins/new", {"username": "alice", "password": "long enough"}
    )
    assert taken.status_code == 422 and "already taken" in taken.text  # an operator's name
    made = admin.post(
        f"/customers/{a.customer_id}/admins/new", {"username": "carol", "password": "long enough"}
    )
    assert made.status_code == 303
    assert "carol" in admin.get(f"/customers/{a.customer_id}/admins").text
    # Support operators see the list but cannot change it.
    refused = support.post(
        f"/customers/{a.customer_id}/admins/new", {"username": "dave", "password": "long enough"}
    )
    assert refused.status_code == 403
    with TestClient(portal_app) as client:
        portal = PortalClient(client)
        assert portal.login("carol", "long enough").status_code == 303
        assert a.domain in client.get("/my").text


def test_customer_admin_manages_mailboxes_within_the_limits(
    acme: PortalClient,  # noqa: F811
    tenants: tuple[Tenant, Tenant],  # noqa: F811
    portal_app: Any,  # noqa: F811
) -> None:
    a, _ = tenants
    made = acme.post(
        "/my/mailboxes/new",
        {"address": f"new@{a.domain}", "password": "long enough pw", "pop3_enabled": "on"},
    )
    assert made.status_code == 303, made.text
    mailbox_id = int(made.headers["location"].split("/")[3].split("?")[0])
    page = acme.get(f"/my/mailboxes/{mailbox_id}").text
    assert f"new@{a.domain}" in page
    assert (
        acme.post(f"/my/mailboxes/{mailbox_id}/status", {"status": "suspended"}).status_code == 303
    )
    saved = acme.post(
        f"/my/mailboxes/{mailbox_id}/settings", {"quota_bytes": "2G", "password": "another pw!"}
    )
    assert saved.status_code == 303
    unlimited = acme.post(f"/my/mailboxes/{mailbox_id}/settings", {"quota_bytes": "0"})
    assert unlimited.status_code == 422 and "only be set by your provider" in unlimited.text
    # The domain allows 5 mailboxes (tenant_helpers): staff@, new@, then three more, then no.
    for n in range(3):
        ok = acme.post(
            "/my/mailboxes/new", {"address": f"m{n}@{a.domain}", "password": "long enough pw"}
        )
        assert ok.status_code == 303
    over = acme.post(
        "/my/mailboxes/new", {"address": f"m9@{a.domain}", "password": "long enough pw"}
    )
    assert over.status_code == 422 and "at most 5 mailboxes" in over.text
    # Aliases: create, change, delete.
    alias = acme.post(
        "/my/aliases/new", {"address": f"team@{a.domain}", "targets": f"new@{a.domain}"}
    )
    assert alias.status_code == 303
    alias_id = int(alias.headers["location"].split("/")[3].split("?")[0])
    assert (
        acme.post(f"/my/aliases/{alias_id}/targets", {"targets": f"staff@{a.domain}"}).status_code
        == 303
    )
    assert acme.post(f"/my/aliases/{alias_id}/delete").status_code == 303
    assert acme.post(f"/my/mailboxes/{mailbox_id}/delete").status_code == 303
    assert acme.get(f"/my/mailboxes/{mailbox_id}").status_code == 404
    # Everything audited with their identity, shown in their audit view.
    with transaction(portal_app.state.session_factory) as session:
        rows = session.scalars(
            select(AuditEntry).where(AuditEntry.customer_id == a.customer_id)
        ).all()
        actions = {(r.actor_type, r.actor, r.action) for r in rows}
    for action in (
        "mailbox.create",
        "mailbox.suspend",
        "mailbox.update",
        "mailbox.password",
        "alias.create",
        "alias.update",
        "alias.delete",
        "mailbox.delete",
    ):
        assert ("customer_admin", a.admin, action) in actions, action
    view = acme.get("/my/audit").text
    assert "alias.delete" in view and "mailbox.delete" in view


def test_customer_admins_create_each_other_but_not_themselves_away(
    acme: PortalClient,  # noqa: F811
    tenants: tuple[Tenant, Tenant],  # noqa: F811
    portal_app: Any,  # noqa: F811
) -> None:
    a, b = tenants
    assert (
        acme.post("/my/admins/new", {"username": "acme-two", "password": "long enough"}).status_code
        == 303
    )
    page = acme.get("/my/admins").text
    assert "acme-two" in page
    # The new administrator is of the same customer (never another's), can log in, and the
    # creation is audited under the creator's name and shown in their customer's audit view.
    with TestClient(portal_app) as client:
        two = PortalClient(client)
        assert two.login("acme-two", "long enough").status_code == 303
        mine = two.get("/my").text
        assert a.domain in mine and b.domain not in mine
    with transaction(portal_app.state.session_factory) as session:
        [made] = session.scalars(
            select(AuditEntry).where(
                AuditEntry.action == "customer_admin.create",
                AuditEntry.object_name == "acme-two",
            )
        ).all()
        assert (made.actor_type, made.actor, made.customer_id) == (
            "customer_admin",
            a.admin,
            a.customer_id,
        )
    assert "customer_admin.create" in acme.get("/my/audit").text
    own = acme.post(f"/my/admins/{a.admin_id}/delete")
    assert own.status_code == 400  # cannot delete yourself
    other = re.search(r'action="/my/admins/(\d+)/delete"', page)
    assert other
    assert acme.post(f"/my/admins/{other.group(1)}/delete").status_code == 303


def test_billing_preview_shows_the_billing_apis_numbers(
    api: Api,
    tenants: tuple[Tenant, Tenant],  # noqa: F811
) -> None:
    a, _ = tenants
    period = dt.datetime.now(dt.UTC).strftime("%Y-%m")  # the current month, as the page
    response = api.get(
        f"/api/v1/billing/usage?customer_id={a.customer_id}&period={period}", api.billing
    )
    assert response.status_code == 200, response.text
    report = response.json()
    [usage] = report["customers"]
    with TestClient(api.client.app) as client:
        portal = login_customer_admin(client, a.admin)
        page = portal.get("/my").text
    assert f'<dd id="bp-active">{usage["mailboxes_active_end"]}</dd>' in page
    assert f'<dd id="bp-suspended">{usage["mailboxes_suspended_end"]}</dd>' in page
    assert f'<dd id="bp-days">{usage["mailbox_days"]}</dd>' in page
    assert re.search(rf'<dd id="bp-amount">{re.escape(str(usage["amount"]))} ', page), usage


def test_api_creates_lists_and_deletes_customer_admins(
    api: Api,
    tenants: tuple[Tenant, Tenant],  # noqa: F811
) -> None:
    a, b = tenants
    made = api.created(
        f"/api/v1/customers/{a.customer_id}/admins", {"username": "erin", "password": "long enough"}
    )
    assert made["customer_id"] == a.customer_id and "password" not in made
    listed = api.get(f"/api/v1/customers/{a.customer_id}/admins").json()["items"]
    assert {r["username"] for r in listed} == {a.admin, "erin"}
    # Another customer's administrator under this customer's path: not found.
    assert_problem(api.get(f"/api/v1/customers/{a.customer_id}/admins/{b.admin_id}"), 404)
    assert_problem(api.delete(f"/api/v1/customers/{a.customer_id}/admins/{b.admin_id}"), 404)
    assert_problem(
        api.post(
            f"/api/v1/customers/{a.customer_id}/admins",
            {"username": "erin", "password": "long enough"},
        ),
        409,
    )
    assert_problem(
        api.post(f"/api/v1/customers/{a.customer_id}/admins", {"username": "x"}, api.read), 403
    )
    assert api.delete(f"/api/v1/customers/{a.customer_id}/admins/{made['id']}").status_code == 204
