"""Customer-bound API tokens: tenant isolation generated from the API's route list (issue 15).

A token bound to customer A (every scope a customer's token may hold) tries every API route:

* a route in ``ISP_ONLY`` must answer 403 whatever the ids (so it never confirms one exists);
* every other route is open to customer tokens and must answer 404 with customer B's ids, and
  the success status with A's own ids (so a 404 for everything cannot pass);
* a route this table does not know (a new route) fails the test until it is put in one of
  the two groups: with the deny-by-default gate in ``web.api.auth.require`` it answers 403,
  which is right only for a route listed here as ISP-only.

Lists must not show B's rows, and B's objects are all still there afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MaildirStore
from app.models import CUSTOMER_SCOPES, AutoReply, Mailbox, MailboxForward
from app.models import Alias as AliasRow
from app.services import accounts
from app.services.audit import CLI_ACTOR
from tests.web.api_helpers import bearer, build_app
from tests.web.tenant_helpers import Tenant, make_tenant
from tests.web.test_route_table import Route, _is_int, _methods, _routes

# Routes a customer's token may never use (the ISP's own business): 403, whatever the ids.
ISP_ONLY = frozenset(
    {
        ("GET", "/api/v1/customers"),
        ("POST", "/api/v1/customers"),
        ("PATCH", "/api/v1/customers/{customer_id}"),
        ("POST", "/api/v1/customers/{customer_id}/suspend"),
        ("POST", "/api/v1/customers/{customer_id}/resume"),
        ("DELETE", "/api/v1/customers/{customer_id}"),
        ("POST", "/api/v1/domains"),
        ("PATCH", "/api/v1/domains/{domain_id}"),
        ("POST", "/api/v1/domains/{domain_id}/suspend"),
        ("POST", "/api/v1/domains/{domain_id}/resume"),
        ("DELETE", "/api/v1/domains/{domain_id}"),
        ("POST", "/api/v1/domains/{domain_id}/aliases"),
        ("DELETE", "/api/v1/domains/{domain_id}/aliases/{alias_id}"),
        ("GET", "/api/v1/domains/{domain_id}/dkim"),
        ("POST", "/api/v1/domains/{domain_id}/dkim"),
        ("POST", "/api/v1/domains/{domain_id}/dkim/{selector}/retire"),
        ("GET", "/api/v1/mailboxes/{mailbox_id}/sending"),
        ("PATCH", "/api/v1/mailboxes/{mailbox_id}/sending"),
        ("GET", "/api/v1/customers/{customer_id}/sending"),
        ("PATCH", "/api/v1/customers/{customer_id}/sending"),
        ("GET", "/api/v1/queue"),
        ("GET", "/api/v1/queue/{queue_id}"),
        ("POST", "/api/v1/queue/{queue_id}/retry"),
        ("POST", "/api/v1/queue/{queue_id}/hold"),
        ("POST", "/api/v1/queue/{queue_id}/release"),
        ("DELETE", "/api/v1/queue/{queue_id}"),
        ("GET", "/api/v1/relay-domains"),
        ("POST", "/api/v1/relay-domains"),
        ("GET", "/api/v1/relay-domains/{domain_id}"),
        ("PATCH", "/api/v1/relay-domains/{domain_id}"),
        ("DELETE", "/api/v1/relay-domains/{domain_id}"),
        ("GET", "/api/v1/relay-domains/{domain_id}/recipients"),
        ("POST", "/api/v1/relay-domains/{domain_id}/recipients"),
        ("DELETE", "/api/v1/relay-domains/{domain_id}/recipients/{address}"),
        ("GET", "/api/v1/relay-domains/{domain_id}/recipients.csv"),
        ("POST", "/api/v1/relay-domains/{domain_id}/recipients/import"),
        ("GET", "/api/v1/relay-domains/{domain_id}/queue"),
        ("POST", "/api/v1/relay-domains/{domain_id}/flush"),
        ("POST", "/api/v1/relay-domains/{domain_id}/hold"),
        ("POST", "/api/v1/relay-domains/{domain_id}/release"),
        ("GET", "/api/v1/domains/{scope_id}/scan-policy"),
        ("PATCH", "/api/v1/domains/{scope_id}/scan-policy"),
        ("GET", "/api/v1/customers/{scope_id}/scan-policy"),
        ("PATCH", "/api/v1/customers/{scope_id}/scan-policy"),
        ("GET", "/api/v1/domains/{domain_id}/scan-lists"),
        ("POST", "/api/v1/domains/{domain_id}/scan-lists/{list_name}"),
        ("DELETE", "/api/v1/domains/{domain_id}/scan-lists/{list_name}"),
        # Message tracking spans every customer's mail; not scoped yet (README says so).
        ("GET", "/api/v1/messages"),
    }
)

# Open to customer tokens: a valid body for each, so that the answer is about the ids.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PATCH", "/api/v1/mailboxes/{mailbox_id}"): {"pop3_enabled": True},
    ("PATCH", "/api/v1/aliases/{alias_id}"): {"targets": ["staff@acme.example"]},
    ("PUT", "/api/v1/mailboxes/{mailbox_id}/forwarding"): {"forward_to": "x@remote.example"},
    ("PUT", "/api/v1/mailboxes/{mailbox_id}/auto-reply"): {"subject": "Away", "body": "Gone."},
    ("POST", "/api/v1/customers/{customer_id}/admins"): {
        "username": "intruder-admin",
        "password": "long enough password",
    },
}
# Open routes without ids (lists, creation): checked by the list and creation tests below.
OPEN_WITHOUT_IDS = frozenset(
    {
        ("GET", "/api/v1/domains"),
        ("GET", "/api/v1/mailboxes"),
        ("POST", "/api/v1/mailboxes"),
        ("GET", "/api/v1/aliases"),
        ("POST", "/api/v1/aliases"),
        ("GET", "/api/v1/billing/usage"),
        ("GET", "/api/v1/billing/events"),
    }
)
# What A's own ids answer on the open routes (everything else: 200).
OWN_STATUS = {"DELETE": 204, "POST": 200}
OWN_STATUS_BY_ROUTE = {("POST", "/api/v1/customers/{customer_id}/admins"): 201}


def _order(item: tuple[str, str, Route]) -> tuple[bool, bool]:
    """With A's ids, deletions run last, and the mailbox's own deletion after its parts'."""
    method, path, _ = item
    return method == "DELETE", path == "/api/v1/mailboxes/{mailbox_id}"


class Tenants:
    def __init__(self, client: TestClient, a: Tenant, b: Tenant, token: str) -> None:
        self.client, self.a, self.b, self.token = client, a, b, token

    def call(self, method: str, url: str, json: Any = None) -> Any:
        return self.client.request(method, url, headers=bearer(self.token), json=json)


@pytest.fixture
def api_app(settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore) -> Any:
    return build_app(settings, session_factory, store)


@pytest.fixture
def tenants(api_app: FastAPI, session_factory: sessionmaker[Session]) -> Iterator[Tenants]:
    a = make_tenant(session_factory, "acme", "acme.example")
    b = make_tenant(session_factory, "globex", "globex.example")
    with transaction(session_factory) as s:
        # B's mailbox has forwarding and an auto-reply: a foreign read must not show them.
        s.add(MailboxForward(mailbox_id=b.mailbox_id, address="b@remote.example", keep_copy=True))
        s.add(AutoReply(mailbox_id=b.mailbox_id, subject="B away", body="B text"))
        _, token = accounts.create_token(
            s, actor=CLI_ACTOR, name="acme-tool", scopes=CUSTOMER_SCOPES, customer_id=a.customer_id
        )
    with TestClient(api_app) as client:
        yield Tenants(client, a, b, token)


def _ids(t: Tenant) -> dict[str, int]:
    return {
        "mailbox_id": t.mailbox_id,
        "domain_id": t.domain_id,
        "alias_id": t.alias_id,
        "customer_id": t.customer_id,
        "admin_id": t.admin_id,
        "scope_id": t.domain_id,
    }


def _url(route: Route, ids: dict[str, int]) -> str | None:
    path = route.path_format
    for param in route.dependant.path_params:
        if _is_int(param.field_info.annotation):
            if param.name not in ids:
                return None
            value = str(ids[param.name])
        else:
            value = "x"
        path = path.replace("{" + param.name + "}", value)
    return path


def test_every_api_route_is_isp_only_or_404_for_another_customers_ids(
    tenants: Tenants, api_app: FastAPI, session_factory: sessionmaker[Session]
) -> None:
    a, b = tenants.a, tenants.b
    routes = _routes(api_app, api=True)
    seen = {(m, r.path_format) for r in routes for m in _methods(r)}
    assert ("GET", "/api/v1/mailboxes/{mailbox_id}") in seen and ("GET", "/api/v1/queue") in seen
    assert not ISP_ONLY - seen, f"stale table rows: {sorted(ISP_ONLY - seen)}"
    failures: list[str] = []
    later: list[tuple[str, str, Route]] = []
    for route in routes:
        for method in _methods(route):
            key = (method, route.path_format)
            foreign = _url(route, _ids(b))
            if key in ISP_ONLY:
                for url in {foreign or route.path_format, _url(route, _ids(a))}:
                    response = tenants.call(method, url or route.path_format)
                    if response.status_code != 403 or b.domain in response.text:
                        failures.append(f"{method} {url}: {response.status_code}, want 403")
                continue
            if not route.dependant.path_params:
                if key not in OPEN_WITHOUT_IDS:
                    failures.append(f"{method} {route.path_format}: not in this test's tables")
                continue
            if foreign is None:
                failures.append(f"{method} {route.path_format}: an id this table does not know")
                continue
            if route.body_field is not None and key not in BODIES:
                failures.append(f"{method} {route.path_format}: no example body in BODIES")
                continue
            response = tenants.call(method, foreign, BODIES.get(key))
            if (
                response.status_code != 404
                or b.domain in response.text
                or "B away" in (response.text)
            ):
                failures.append(f"{method} {foreign}: {response.status_code}, want 404")
            later.append((method, route.path_format, route))
    # A's own ids work (a route answering 404 to everything would pass the loop above).
    for method, path, route in sorted(later, key=_order):
        own = _url(route, _ids(a))
        assert own is not None
        want = OWN_STATUS_BY_ROUTE.get((method, path), OWN_STATUS.get(method, 200))
        response = tenants.call(method, own, BODIES.get((method, path)))
        if response.status_code != want:
            failures.append(f"{method} {own} (own): {response.status_code}, want {want}")
    assert not failures, "\n".join(failures)
    with session_factory() as s:  # nothing of B's was changed or removed
        assert s.get(Mailbox, b.mailbox_id) is not None
        assert s.get(AliasRow, b.alias_id) is not None
        forward = s.get(MailboxForward, b.mailbox_id)
        assert forward is not None and forward.address == "b@remote.example"
        assert s.get(AutoReply, b.mailbox_id) is not None


def test_lists_show_only_the_own_customer_and_a_foreign_filter_is_404(tenants: Tenants) -> None:
    a, b = tenants.a, tenants.b
    for url in (
        "/api/v1/domains",
        "/api/v1/mailboxes",
        "/api/v1/aliases",
        "/api/v1/mailboxes?search=staff",
        f"/api/v1/customers/{a.customer_id}/mailboxes",
        "/api/v1/billing/usage?period=2026-12",
        "/api/v1/billing/events",
    ):
        response = tenants.call("GET", url)
        assert response.status_code == 200, (url, response.text)
        assert b.domain not in response.text and a.domain in response.text, url
    for url in (
        f"/api/v1/domains?customer_id={b.customer_id}",
        f"/api/v1/mailboxes?customer_id={b.customer_id}",
        f"/api/v1/mailboxes?domain_id={b.domain_id}",
        f"/api/v1/aliases?domain_id={b.domain_id}",
        f"/api/v1/billing/usage?period=2026-12&customer_id={b.customer_id}",
        f"/api/v1/billing/events?customer_id={b.customer_id}",
    ):
        assert tenants.call("GET", url).status_code == 404, url


def test_creating_in_another_customers_domain_is_refused_like_an_unknown_domain(
    tenants: Tenants, session_factory: sessionmaker[Session]
) -> None:
    a, b = tenants.a, tenants.b
    body = {"address": f"new@{b.domain}", "password": "long enough password"}
    foreign = tenants.call("POST", "/api/v1/mailboxes", body)
    unknown = tenants.call("POST", "/api/v1/mailboxes", {**body, "address": "new@nowhere.example"})
    assert foreign.status_code == unknown.status_code
    assert foreign.status_code in (404, 422), foreign.text
    alias = tenants.call(
        "POST", "/api/v1/aliases", {"address": f"x@{b.domain}", "targets": [f"staff@{a.domain}"]}
    )
    assert alias.status_code in (404, 422), alias.text
    own = tenants.call("POST", "/api/v1/mailboxes", {**body, "address": f"new@{a.domain}"})
    assert own.status_code == 201, own.text
    with session_factory() as s:
        assert s.query(Mailbox).filter(Mailbox.local_part == "new").count() == 1


def test_a_customer_token_cannot_hold_the_queue_scope_and_is_audited_with_its_customer(
    tenants: Tenants, session_factory: sessionmaker[Session]
) -> None:
    from app.errors import ValidationError
    from app.models import AuditEntry

    with pytest.raises(ValidationError, match="queue"), transaction(session_factory) as s:
        accounts.create_token(
            s, actor=CLI_ACTOR, name="q", scopes=["queue"], customer_id=tenants.a.customer_id
        )
    response = tenants.call(
        "PUT",
        f"/api/v1/mailboxes/{tenants.a.mailbox_id}/auto-reply",
        {"subject": "Away", "body": "Gone."},
    )
    assert response.status_code == 200, response.text
    with session_factory() as s:
        entry = (
            s.query(AuditEntry)
            .filter(AuditEntry.action == "mailbox.auto_reply")
            .order_by(AuditEntry.id.desc())
            .first()
        )
        assert entry is not None
        assert (entry.actor_type, entry.actor, entry.customer_id) == (
            "token",
            "acme-tool",
            tenants.a.customer_id,
        )
