"""Every route, generated from the app's own route list: bad ids and parameters never a 500.

Postfix-style tables, one runner each, built from ``app.routes`` (portal and API alike), so a
route added later with an id parameter, a ``q`` or an ``after`` is covered without touching
this file:

* every path parameter that is an integer gets 2**63, 10**30, -1 and ``abc`` (and the largest
  id, 2**63 - 1, which reaches the database and names no row): 404 or 422;
* every integer query parameter gets the same values and every search parameter 60,000
  characters: 422;
* every integer field of every API request schema gets ``true``, 1.5, ``"1"`` and 2**70, and
  every flag 1 and ``"true"``: 422 naming the field.

The operator is an admin (portal, with its CSRF token) or a token with every scope (API), so
a refusal for lack of rights cannot stand in for the answer under test.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel

from app.db import transaction
from app.models import SCOPES
from tests.factories import make_customer, make_domain, make_mailbox
from tests.web.api_helpers import Api, api_fixture, assert_problem, make_token  # noqa: F401
from tests.web.portal_helpers import PortalClient, admin, portal_app  # noqa: F401
from tests.web.tenant_helpers import customer_admin  # noqa: F401
from web.params import ID_MAX

BAD_IDS: tuple[object, ...] = (2**63, 10**30, -1, "abc")
LARGEST_ID = ID_MAX  # in range on every database, names no row
BAD_INTS_IN_BODIES: tuple[object, ...] = (True, 1.5, "1", 2**70)
BAD_FLAGS_IN_BODIES: tuple[object, ...] = (1, "true")
SEARCH_NAMES = frozenset({"q", "search", "object", "actor", "object_type", "cursor"})
LONG_TEXT = "a" * 60_000
API = "/api/"


def _types_in(tp: Any) -> set[Any]:
    """The plain types inside an annotation: ``Annotated[int, ...] | None`` -> {int, None}."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _types_in(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_types_in(arg) for arg in typing.get_args(tp)))
    return {tp}


def _is_int(tp: Any) -> bool:
    return int in _types_in(tp)


def _is_flag(tp: Any) -> bool:
    return bool in _types_in(tp)


@dataclass(frozen=True)
class Route:
    """One endpoint as served: its full path (router prefixes included) and its parameters."""

    path_format: str
    methods: frozenset[str]
    declared: APIRoute  # as declared: its parameters (its own path lacks the prefixes)

    @property
    def dependant(self) -> Any:
        return self.declared.dependant

    @property
    def body_field(self) -> Any:
        return self.declared.body_field


def _routes(app: FastAPI, *, api: bool) -> list[Route]:
    """Every endpoint of the app. FastAPI keeps included routers nested in ``app.routes``;
    ``iter_route_contexts`` yields the routes as the router matches them."""
    routes = []
    for context in iter_route_contexts(app.routes):
        declared = context.original_route
        path = context.path_format
        if isinstance(declared, APIRoute) and path and path.startswith(API) == api:
            routes.append(Route(path, frozenset(context.methods or ()), declared))
    return routes


def _methods(route: Route) -> list[str]:
    return sorted(route.methods - {"HEAD"})


def _url(route: Route, value: object) -> str:
    """The route's path with ``value`` for every integer path parameter ("x" for text)."""
    path = route.path_format
    for param in route.dependant.path_params:
        text = str(value) if _is_int(param.field_info.annotation) else "x"
        path = path.replace("{" + param.name + "}", text)
    return path


def _int_path_routes(app: FastAPI, *, api: bool) -> list[Route]:
    return [
        r
        for r in _routes(app, api=api)
        if any(_is_int(p.field_info.annotation) for p in r.dependant.path_params)
    ]


def _every_scope(api: Api) -> str:
    """A token holding every scope there is (``api.admin`` lacks ``queue``), made once per app."""
    token: str | None = getattr(api, "_every_scope_token", None)
    if token is None:
        token = make_token(api.factory, *sorted(SCOPES), name="every-scope")
        object.__setattr__(api, "_every_scope_token", token)
    return token


def _seed(api_or_factory: Any) -> None:
    """One of everything, so "no such row" is tested next to rows that exist."""
    with transaction(api_or_factory) as session:
        customer = make_customer(session, "Acme")
        make_domain(session, "acme.example", customer=customer)
    with transaction(api_or_factory) as session:
        make_mailbox(session, "bob@acme.example")


def _portal_call(portal: PortalClient, method: str, url: str) -> Any:
    return portal.get(url) if method == "GET" else portal.post(url)


def _client_for(url: str, staff: PortalClient, tenant: PortalClient) -> PortalClient:
    """``/my`` pages belong to customer administrators (issue 15); the rest to operators."""
    return tenant if url.startswith("/my") else staff


# ------------------------------------------------------------------------------ path ids
def test_every_portal_route_with_an_id_answers_404_for_bad_ids(
    admin: PortalClient,  # noqa: F811
    customer_admin: PortalClient,  # noqa: F811
    portal_app: FastAPI,  # noqa: F811
) -> None:
    _seed(portal_app.state.session_factory)
    routes = _int_path_routes(portal_app, api=False)
    paths = {r.path_format for r in routes}
    # The table is built from the route list; these must be in it or the list is wrong.
    assert {"/customers/{customer_id}", "/mailboxes/{mailbox_id}/status"} <= paths, paths
    failures = []
    calls = 0
    for route in routes:
        for method in _methods(route):
            for value in (*BAD_IDS, LARGEST_ID):
                url = _url(route, value)
                response = _portal_call(_client_for(url, admin, customer_admin), method, url)
                calls += 1
                page = response.text
                # A bad id names no page: 404. The largest id reaches the route, and a POST
                # of an empty form may be refused for the form first (400/422): never a 500.
                allowed = {404} if value != LARGEST_ID or method == "GET" else {400, 404, 422}
                status = response.status_code
                if status not in allowed or f'<p class="status-code">{status}</p>' not in page:
                    failures.append(f"{method} {url}: {response.status_code} {page[:200]!r}")
    assert calls >= 5 * len(routes)
    assert not failures, "\n".join(failures)


def test_every_api_route_with_an_id_answers_a_problem_for_bad_ids(api: Api) -> None:
    _seed(api.factory)
    app: FastAPI = api.client.app  # type: ignore[assignment]
    routes = _int_path_routes(app, api=True)
    paths = {r.path_format for r in routes}
    assert {"/api/v1/customers/{customer_id}", "/api/v1/mailboxes/{mailbox_id}"} <= paths
    failures = []
    for route in routes:
        for method in _methods(route):
            body = {} if method in ("POST", "PATCH", "PUT") else None
            for value in (*BAD_IDS, LARGEST_ID):
                url = _url(route, value)
                response = api.call(method, url, _every_scope(api), json=body)
                try:
                    # Out of range or malformed: 422 naming the parameter; in range, no row:
                    # 404 (or 422 when the empty body is refused first).
                    expected = (404, 422) if value == LARGEST_ID else (422,)
                    assert response.status_code in expected, response.status_code
                    assert_problem(response, response.status_code)
                except AssertionError as exc:
                    failures.append(f"{method} {url}: {exc} {response.text[:200]!r}")
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------ query parameters
def _query_cases(route: Route) -> list[tuple[str, object]]:
    cases: list[tuple[str, object]] = []
    for param in route.dependant.query_params:
        name = param.alias or param.name
        if _is_int(param.field_info.annotation):
            cases += [(name, value) for value in BAD_IDS]
        elif name in SEARCH_NAMES:
            cases.append((name, LONG_TEXT))
    return cases


def _query_routes(app: FastAPI, *, api: bool) -> list[tuple[Route, str, object]]:
    return [
        (route, name, value)
        for route in _routes(app, api=api)
        if "GET" in route.methods
        for name, value in _query_cases(route)
    ]


def test_every_portal_list_refuses_huge_query_values_with_422(
    admin: PortalClient,  # noqa: F811
    customer_admin: PortalClient,  # noqa: F811
    portal_app: FastAPI,  # noqa: F811
) -> None:
    cases = _query_routes(portal_app, api=False)
    covered = {(route.path_format, name) for route, name, _ in cases}
    assert {("/customers", "q"), ("/customers", "after"), ("/audit", "before")} <= covered
    failures = []
    for route, name, value in cases:
        url = _url(route, 1)
        response = _client_for(url, admin, customer_admin).get(url, params={name: str(value)})
        if response.status_code != 422 or '<p class="status-code">422</p>' not in response.text:
            failures.append(f"GET {url}?{name}={str(value)[:30]}: {response.status_code}")
    assert not failures, "\n".join(failures)


def test_every_api_list_refuses_huge_query_values_with_a_problem(api: Api) -> None:
    app: FastAPI = api.client.app  # type: ignore[assignment]
    cases = _query_routes(app, api=True)
    covered = {(route.path_format, name) for route, name, _ in cases}
    assert {("/api/v1/customers", "search"), ("/api/v1/billing/events", "after")} <= covered
    failures = []
    for route, name, value in cases:
        url = _url(route, 1)
        response = api.call("GET", url, _every_scope(api), params={name: str(value)})
        try:
            assert_problem(response, 422, name)
        except AssertionError as exc:
            failures.append(f"GET {url}?{name}={str(value)[:30]}: {exc}")
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------ API bodies
def _body_cases(app: FastAPI) -> list[tuple[Route, str, str, object]]:
    """(route, method, field, bad value) for every number and flag of every request schema."""
    cases = []
    for route in _routes(app, api=True):
        body = route.body_field
        model = body.field_info.annotation if body is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        for method in _methods(route):
            for name, field in model.model_fields.items():
                if _is_flag(field.annotation):
                    cases += [(route, method, name, value) for value in BAD_FLAGS_IN_BODIES]
                elif _is_int(field.annotation):
                    cases += [(route, method, name, value) for value in BAD_INTS_IN_BODIES]
    return cases


def test_every_number_and_flag_in_api_bodies_is_strict(api: Api) -> None:
    _seed(api.factory)
    app: FastAPI = api.client.app  # type: ignore[assignment]
    cases = _body_cases(app)
    covered = {(route.path_format, name) for route, _, name, _ in cases}
    assert {
        ("/api/v1/domains", "customer_id"),
        ("/api/v1/domains", "max_mailboxes"),
        ("/api/v1/domains/{domain_id}", "total_quota_bytes"),
        ("/api/v1/mailboxes", "quota_bytes"),
        ("/api/v1/mailboxes", "pop3_enabled"),
        ("/api/v1/mailboxes/{mailbox_id}", "quota_bytes"),
    } <= covered, covered
    failures = []
    for route, method, name, value in cases:
        url = _url(route, 1)
        response = api.call(method, url, _every_scope(api), json={name: value})
        try:
            problem = assert_problem(response, 422)
            assert name in [e["field"] for e in problem["errors"]], problem
        except AssertionError as exc:
            failures.append(f"{method} {url} {{{name!r}: {value!r}}}: {exc}")
    assert not failures, "\n".join(failures)
