"""Every API operation refuses missing, bad and revoked tokens (401) and wrong scopes (403).

The table of operations is read from the served OpenAPI document, so a new endpoint is covered
(and must declare its scope here) without anyone remembering to add a row.
"""

from __future__ import annotations

import re

import pytest

from app.db import transaction
from app.models import ApiToken, AuditEntry
from app.services import accounts
from app.services.audit import CLI_ACTOR
from tests.web.api_helpers import Api, api_fixture, assert_problem, make_token  # noqa: F401

SCOPE_TOKENS = ("provisioning", "read", "billing")


def required_scope(method: str, path: str) -> str:
    if path.startswith("/api/v1/billing/"):
        return "billing:read"
    if path == "/api/v1/queue" or path.startswith("/api/v1/queue/"):
        return "queue"  # reads too: the queue shows every customer's senders and recipients
    if re.fullmatch(r"/api/v1/relay-domains/[^/]+/(queue|flush|hold|release)", path):
        return "queue"  # a relay domain's queue and its flush / hold / release
    return "read" if method == "get" else "provisioning"


def operations(api: Api) -> list[tuple[str, str]]:
    schema = api.client.get("/api/v1/openapi.json").json()
    ops = []
    for path, methods in schema["paths"].items():
        if not path.startswith("/api/v1/"):
            continue
        for method in methods:
            if method in ("get", "post", "patch", "delete", "put"):
                ops.append((method, re.sub(r"\{[^}]+\}", "1", path)))
    return ops


def test_the_schema_lists_every_resource(api: Api) -> None:
    paths = {path for _, path in operations(api)}
    for expected in (
        "/api/v1/customers",
        "/api/v1/domains",
        "/api/v1/mailboxes",
        "/api/v1/aliases",
        "/api/v1/domains/1/aliases",
        "/api/v1/mailboxes/1/suspend",
        "/api/v1/mailboxes/1/resume",
        "/api/v1/billing/usage",
        "/api/v1/billing/events",
    ):
        assert expected in paths


def test_no_token_gets_401_with_a_bearer_challenge_everywhere(api: Api) -> None:
    for method, path in operations(api):
        response = api.call(method.upper(), path, token=None)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == 'Bearer realm="mailhost"', (method, path)


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer mh_nonexistent_secret",
        "Bearer not-a-token",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "mh_abc",
    ],
)
def test_bad_credentials_get_401(api: Api, authorization: str) -> None:
    for method, path in operations(api)[:6] + [("get", "/api/v1/billing/events")]:
        response = api.client.request(
            method.upper(), path, headers={"Authorization": authorization}
        )
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_tampered_secret_gets_401(api: Api) -> None:
    # Same prefix (the row is found), different secret: the constant-time compare refuses it.
    tampered = api.admin[:-4] + ("AAAA" if not api.admin.endswith("AAAA") else "BBBB")
    response = api.get("/api/v1/customers", token=tampered)
    assert_problem(response, 401)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_a_revoked_token_gets_401(api: Api) -> None:
    token = make_token(api.factory, "read", name="soon revoked")
    assert api.get("/api/v1/customers", token=token).status_code == 200
    with transaction(api.factory) as s:
        row = next(t for t in accounts.list_tokens(s) if t.name == "soon revoked")
        accounts.revoke_token(s, actor=CLI_ACTOR, token_id=row.id)
    response = api.get("/api/v1/customers", token=token)
    assert_problem(response, 401)
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_each_scope_is_refused_where_it_does_not_apply(api: Api) -> None:
    tokens = {"provisioning": api.provisioning, "read": api.read, "billing:read": api.billing}
    refused = 0
    for method, path in operations(api):
        needed = required_scope(method, path)
        for scope, token in tokens.items():
            response = api.call(method.upper(), path, token=token)
            if scope == needed:
                assert response.status_code not in (401, 403), (method, path, response.text)
            else:
                assert_problem(response, 403)
                challenge = response.headers["www-authenticate"]
                assert f'error="insufficient_scope", scope="{needed}"' in challenge
                refused += 1
    assert refused >= 2 * 30  # two wrong scopes for each of the 30-odd operations


def test_cookies_never_authenticate_the_api(api: Api) -> None:
    # A valid token offered as a cookie under any plausible name is ignored.
    for name in ("session", "mailhost_session", "access_token", "Authorization", "token"):
        api.client.cookies.set(name, api.admin)
    response = api.client.get("/api/v1/customers")
    assert_problem(response, 401)
    # And the query string is no place for a token either (RFC 6750 section 2.3 discourages it).
    assert_problem(api.client.get(f"/api/v1/customers?access_token={api.admin}"), 401)


def test_a_portal_session_cookie_alone_does_not_open_the_api(api: Api) -> None:
    """Log in to the portal for real and call the API with only the session cookie the
    browser would send."""
    from tests.factories import DEFAULT_PASSWORD, make_operator

    login_page = api.client.get("/login")
    assert login_page.status_code == 200, "the portal is not mounted"
    with transaction(api.factory) as s:
        make_operator(s, "apicookie")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', login_page.text)
    assert csrf, "login form has no CSRF field"
    response = api.client.post(
        "/login",
        data={"username": "apicookie", "password": DEFAULT_PASSWORD, "csrf_token": csrf.group(1)},
        follow_redirects=False,
    )
    assert response.status_code in (302, 303), response.text
    assert api.client.cookies, "the portal set no session cookie"
    assert api.client.get("/").status_code == 200  # the cookie does work for the portal
    assert_problem(api.client.get("/api/v1/customers"), 401)
    assert_problem(api.client.post("/api/v1/customers", json={"name": "Via cookie"}), 401)


def test_changes_are_audited_with_the_token_name_and_address(api: Api) -> None:
    created = api.created("/api/v1/customers", {"name": "Audited Ltd"})
    with transaction(api.factory) as s:
        entries = s.query(AuditEntry).filter(AuditEntry.object_type == "customer").all()
        token = s.query(ApiToken).filter(ApiToken.name == "admin").one()
        assert token.last_used_at is not None
    [entry] = [e for e in entries if e.object_id == str(created["id"])]
    assert (entry.actor_type, entry.actor) == ("token", "admin")
    assert entry.remote_addr  # the client's address as the server saw it
