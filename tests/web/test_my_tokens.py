"""API tokens bound to a customer, created in the portal: by a customer administrator at
/my/tokens (their own customer only) and by an ISP admin at /tokens with a customer."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.models import ApiToken
from tests.web.api_helpers import bearer
from tests.web.portal_helpers import PortalClient, admin, portal_app  # noqa: F401
from tests.web.tenant_helpers import Tenant, acme, tenants  # noqa: F401

SECRET = re.compile(r'<code id="token-secret">([^<]+)</code>')


def test_customer_admin_creates_lists_and_revokes_own_tokens_only(
    acme: PortalClient,  # noqa: F811
    tenants: tuple[Tenant, Tenant],  # noqa: F811
    session_factory: sessionmaker[Session],
) -> None:
    a, b = tenants
    assert 'href="/my/tokens/new"' in acme.get("/my/tokens").text
    queue = acme.post("/my/tokens/new", {"name": "sneaky", "scopes": "queue"})
    assert queue.status_code == 422 and "queue" in queue.text
    made = acme.post("/my/tokens/new", {"name": "acme crm", "scopes": ["read", "provisioning"]})
    assert made.status_code == 200, made.text
    secret = SECRET.search(made.text)
    assert secret is not None
    with session_factory() as s:
        row = s.query(ApiToken).filter(ApiToken.name == "acme crm").one()
        assert row.customer_id == a.customer_id and row.owner == a.admin
        token_id = row.id
    # The token works for A's mailbox and is blind to B's.
    api = acme.http
    own = api.get(f"/api/v1/mailboxes/{a.mailbox_id}", headers=bearer(secret.group(1)))
    assert own.status_code == 200, own.text
    foreign = api.get(f"/api/v1/mailboxes/{b.mailbox_id}", headers=bearer(secret.group(1)))
    assert foreign.status_code == 404
    assert api.get("/api/v1/queue", headers=bearer(secret.group(1))).status_code == 403
    listed = acme.get("/my/tokens").text
    assert "acme crm" in listed and "acme-tool" in listed and "globex-tool" not in listed
    # B's token cannot be revoked from A's portal: not found, and still active.
    assert acme.post(f"/my/tokens/{b.token_id}/revoke").status_code == 404
    assert acme.post(f"/my/tokens/{token_id}/revoke").status_code == 303
    with session_factory() as s:
        assert s.get(ApiToken, token_id).revoked_at is not None  # type: ignore[union-attr]
        assert s.get(ApiToken, b.token_id).revoked_at is None  # type: ignore[union-attr]
    assert api.get("/api/v1/domains", headers=bearer(secret.group(1))).status_code == 401


def test_isp_admin_binds_a_token_to_a_customer(
    admin: PortalClient,  # noqa: F811
    tenants: tuple[Tenant, Tenant],  # noqa: F811
    session_factory: sessionmaker[Session],
    portal_app: Any,  # noqa: F811
) -> None:
    a, _ = tenants
    unknown = admin.post("/tokens/new", {"name": "x", "scopes": "read", "customer": "Nobody"})
    assert unknown.status_code == 422 and "Nobody" in unknown.text
    made = admin.post("/tokens/new", {"name": "acme billing", "scopes": "read", "customer": "Acme"})
    assert made.status_code == 200, made.text
    with session_factory() as s:
        row = s.query(ApiToken).filter(ApiToken.name == "acme billing").one()
        assert row.customer_id == a.customer_id
    page = admin.get("/tokens").text
    assert "acme billing" in page and "Acme" in page
    isp = admin.post("/tokens/new", {"name": "isp sync", "scopes": "queue"})
    assert isp.status_code == 200
    with TestClient(portal_app) as client:
        secret = SECRET.search(isp.text)
        assert secret is not None
        assert client.get("/api/v1/queue", headers=bearer(secret.group(1))).status_code == 200
