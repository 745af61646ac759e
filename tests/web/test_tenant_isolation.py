"""Tenant isolation, generated from the app's route list (issue 15).

Logged in as customer A's administrator, every portal route is tried with customer B's ids
(mailbox, domain, alias, customer, administrator) and must answer 404, never 403 and never
the page: the answer must not confirm that the id exists. Routes of the ISP's own portal
answer 404 to a customer administrator whatever the id (audit entries, queue messages,
exports, import previews, operators and tokens are all among them). A route under ``/my``
with an id parameter this table does not know fails the test until its foreign id is added
here, so a new route cannot slip past without a tenant check. Lists and searches must not
show B's rows, and the API does not accept a customer administrator's session at all (the
API takes bearer tokens only; customer-bound tokens: tests/web/test_api_tenant_isolation.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from sqlalchemy import select

from app.models import AuditEntry, Mailbox
from tests.web.portal_helpers import PortalClient, portal_app  # noqa: F401
from tests.web.tenant_helpers import Tenant, acme, tenants  # noqa: F401
from tests.web.test_route_table import Route, _is_int, _methods, _routes

# Routes anyone may open (the login steps, health checks for load balancers).
PUBLIC = frozenset({"/login", "/login/totp", "/healthz", "/readyz", "/livez"})
MY = "/my"
# The mailbox users' own area (its own login and cookie): a customer administrator's session
# opens none of it; only its login form is shown.
ME = "/me"
ME_PUBLIC = frozenset({("GET", "/me/login")})


def _foreign_ids(b: Tenant) -> dict[str, int]:
    return {
        "mailbox_id": b.mailbox_id,
        "domain_id": b.domain_id,
        "alias_id": b.alias_id,
        "customer_id": b.customer_id,
        "admin_id": b.admin_id,
        "token_id": b.token_id,
    }


def _url(route: Route, ids: dict[str, int]) -> str | None:
    path = route.path_format
    for param in route.dependant.path_params:
        if _is_int(param.field_info.annotation):
            if param.name not in ids:
                if path.startswith(MY):
                    return None  # unknown to this table: reported as a failure
                value = "1"
            else:
                value = str(ids[param.name])
        else:
            value = "x"
        path = path.replace("{" + param.name + "}", value)
    return path


def _call(portal: PortalClient, method: str, url: str) -> Any:
    return portal.get(url, follow_redirects=False) if method == "GET" else portal.post(url)


def test_every_portal_route_answers_404_for_another_customers_ids(
    acme: PortalClient,  # noqa: F811
    tenants: tuple[Tenant, Tenant],  # noqa: F811
    portal_app: FastAPI,  # noqa: F811
) -> None:
    _, b = tenants
    ids = _foreign_ids(b)
    routes = [r for r in _routes(portal_app, api=False) if r.path_format not in PUBLIC]
    with_ids = [r for r in routes if r.dependant.path_params]
    paths = {r.path_format for r in with_ids}
    assert {"/my/mailboxes/{mailbox_id}", "/my/aliases/{alias_id}/delete"} <= paths
    assert {"/customers/{customer_id}", "/mailboxes/{mailbox_id}/status"} <= paths
    failures = []
    for route in with_ids:
        url = _url(route, ids)
        if url is None:
            failures.append(f"{route.path_format}: an id parameter this table does not know")
            continue
        for method in _methods(route):
            response = _call(acme, method, url)
            if response.status_code != 404 or b.domain in response.text:
                failures.append(f"{method} {url}: {response.status_code}")
    assert not failures, "\n".join(failures)


def test_every_isp_page_without_ids_is_404_and_my_pages_show_only_their_customer(
    acme: PortalClient,  # noqa: F811
    tenants: tuple[Tenant, Tenant],  # noqa: F811
    portal_app: FastAPI,  # noqa: F811
) -> None:
    a, b = tenants
    routes = [
        r
        for r in _routes(portal_app, api=False)
        if r.path_format not in PUBLIC and not r.dependant.path_params
    ]
    failures = []
    for route in routes:
        for method in _methods(route):
            if route.path_format == ME or route.path_format.startswith(ME + "/"):
                response = _call(acme, method, route.path_format)
                if (method, route.path_format) in ME_PUBLIC:
                    ok = response.status_code == 200
                else:  # sent to the /me login (303) or refused (403: no /me CSRF token)
                    ok = response.status_code in (303, 403)
                if not ok or b.domain in response.text:
                    failures.append(f"{method} {route.path_format}: {response.status_code}")
            elif route.path_format.startswith(MY):
                if method != "GET":
                    continue  # the forms: tried below with foreign values
                response = _call(acme, method, route.path_format)
                if response.status_code != 200 or b.domain in response.text:
                    failures.append(f"{method} {route.path_format}: {response.status_code}")
            else:
                response = _call(acme, method, route.path_format)
                if response.status_code != 404 and route.path_format != "/":
                    failures.append(f"{method} {route.path_format}: {response.status_code}")
    assert not failures, "\n".join(failures)
    # The home page sends a customer administrator to their own.
    home = acme.get("/", follow_redirects=False)
    assert home.status_code == 303 and home.headers["location"] == "/my"
    page = acme.get("/my").text
    assert a.domain in page and b.domain not in page


def test_searches_and_filters_never_return_foreign_rows(
    acme: PortalClient,  # noqa: F811
    tenants: tuple[Tenant, Tenant],  # noqa: F811
) -> None:
    a, b = tenants
    for url in ("/my/mailboxes?q=staff", "/my/aliases?q=info", "/my/audit", "/my/admins"):
        page = acme.get(url)
        assert page.status_code == 200, url
        assert b.domain not in page.text and "globex" not in page.text, url
    assert a.domain in acme.get("/my/mailboxes?q=staff").text
    assert acme.get(f"/my/mailboxes?domain={b.domain_id}").status_code == 404
    # The audit view shows the own administrator's actions only.
    audit = acme.get("/my/audit").text
    assert "mailbox.suspend" in audit and a.admin in audit and b.admin not in audit


def test_forms_refuse_another_customers_objects(
    acme: PortalClient,  # noqa: F811
    tenants: tuple[Tenant, Tenant],  # noqa: F811
) -> None:
    a, b = tenants
    # A mailbox or alias in B's domain: "not hosted here", like a domain that does not exist.
    page = acme.post(
        "/my/mailboxes/new", {"address": f"new@{b.domain}", "password": "long enough pw"}
    )
    assert page.status_code == 422 and "is not hosted here" in page.text
    unknown = acme.post(
        "/my/mailboxes/new", {"address": "new@nowhere.example", "password": "long enough pw"}
    )
    assert unknown.status_code == 422 and "is not hosted here" in unknown.text
    page = acme.post(
        "/my/aliases/new", {"address": f"x@{b.domain}", "targets": f"staff@{a.domain}"}
    )
    assert page.status_code == 422 and "is not hosted here" in page.text
    # An alias of A may not point into B (the same answer as for an unknown address).
    page = acme.post(
        "/my/aliases/new", {"address": f"x@{a.domain}", "targets": f"staff@{b.domain}"}
    )
    assert page.status_code == 422


def test_the_api_does_not_accept_a_customer_administrators_session(
    acme: PortalClient,  # noqa: F811
    portal_app: FastAPI,  # noqa: F811
) -> None:
    failures = []
    for route in _routes(portal_app, api=True):
        url = _url(route, {}) or route.path_format
        for method in _methods(route):
            response = acme.http.request(method, url)
            if response.status_code != 401:
                failures.append(f"{method} {url}: {response.status_code}")
    assert not failures, "\n".join(failures)


def test_audit_entries_events_usage_exports_and_import_previews_with_foreign_ids(
    acme: PortalClient,  # noqa: F811
    tenants: tuple[Tenant, Tenant],  # noqa: F811
    portal_app: FastAPI,  # noqa: F811
) -> None:
    """The objects of issue 15's list that have no id route of their own: their ISP views
    answer 404 to a customer administrator with another customer's ids in the query (never
    the page, never 403), and the own audit view paged from a foreign entry shows none of it."""
    a, b = tenants
    with portal_app.state.session_factory() as session:
        foreign = session.scalars(
            select(AuditEntry.id).where(AuditEntry.customer_id == b.customer_id)
        ).all()
    assert foreign  # B's administrator suspended B's mailbox (tenant_helpers)
    csv = f"address,password\r\nnew@{b.domain},long enough pw\r\n"
    calls = [
        ("GET", f"/audit?object_type=mailbox&object={b.mailbox_id}"),  # audit entries
        ("GET", f"/audit?actor={b.admin}&before={max(foreign) + 1}"),
        ("GET", f"/tracking?address=staff@{b.domain}"),  # message events
        ("GET", "/dashboard/storage.csv"),  # usage
        ("GET", f"/customers/{b.customer_id}/history.csv"),
        ("POST", "/dashboard/refresh-usage"),
        ("GET", f"/export.csv?domain={b.domain_id}"),  # export
        ("POST", "/import/preview"),  # import preview and its confirmation
        ("POST", "/import/confirm"),
    ]
    failures = []
    for method, url in calls:
        if method == "GET":
            response = acme.get(url, follow_redirects=False)
        else:
            response = acme.post(url, {"csv_text": csv})
        if response.status_code != 404 or b.domain in response.text:
            failures.append(f"{method} {url}: {response.status_code}")
    assert not failures, "\n".join(failures)
    own = acme.get(f"/my/audit?after={max(foreign) + 1}")
    assert own.status_code == 200
    assert a.admin in own.text and b.admin not in own.text and b.domain not in own.text
    with portal_app.state.session_factory() as session:  # nothing was imported into B
        assert session.scalars(select(Mailbox).where(Mailbox.local_part == "new")).all() == []
