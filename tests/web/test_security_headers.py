"""Security and caching headers on every kind of answer, and HEAD wherever GET works."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MaildirStore
from tests.factories import make_domain
from tests.web.api_helpers import bearer, make_token
from tests.web.portal_helpers import PortalClient, add_operator
from web.app import create_app

# (path, logged in as an operator, with an API token)
PAGES = [
    ("/login", False, False),
    ("/", True, False),
    ("/customers", True, False),
    ("/import", True, False),
    ("/healthz", False, False),
    ("/no-such-page", True, False),
    ("/api/v1/customers", False, True),
    ("/api/v1/customers", False, False),  # 401
    ("/api/v1/openapi.json", False, False),
]


def _client(settings: Settings, factory: sessionmaker[Session], store: MaildirStore) -> TestClient:
    return TestClient(create_app(settings, session_factory=factory, store=store))


@pytest.fixture
def portal(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> Iterator[PortalClient]:
    add_operator(session_factory, "alice", "admin")
    with _client(settings, session_factory, store) as client:
        p = PortalClient(client)
        assert p.login("alice").status_code == 303
        yield p


def _headers(path: str, logged_in: bool, token: str | None) -> dict[str, str]:
    return bearer(token) if token else {}


@pytest.mark.parametrize(("path", "logged_in", "with_token"), PAGES)
def test_every_answer_carries_the_security_headers_and_no_store(
    portal: PortalClient,
    session_factory: sessionmaker[Session],
    path: str,
    logged_in: bool,
    with_token: bool,
) -> None:
    token = make_token(session_factory, "read") if with_token else None
    client = portal.http
    if not logged_in:
        client.cookies.clear()
    response = client.get(path, headers=_headers(path, logged_in, token), follow_redirects=False)
    h = response.headers
    csp = h["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert h["x-frame-options"] == "DENY"
    assert h["x-content-type-options"] == "nosniff"
    assert h["referrer-policy"] == "same-origin"
    assert h["cache-control"] == "no-store"
    assert "strict-transport-security" not in h  # plain HTTP: never HSTS (RFC 6797 7.2)

    head = client.head(path, headers=_headers(path, logged_in, token), follow_redirects=False)
    assert head.status_code == response.status_code, (path, head.status_code)
    assert head.content == b""
    assert head.headers.get("content-length") == h.get("content-length")
    assert head.headers["content-type"] == h["content-type"]


def test_static_assets_stay_cacheable(portal: PortalClient) -> None:
    css = portal.get("/static/portal.css")
    assert css.status_code == 200
    assert css.headers.get("cache-control") != "no-store"
    assert css.headers["x-content-type-options"] == "nosniff"
    assert portal.http.head("/static/portal.css").status_code == 200


def test_hsts_only_behind_https(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    secure = settings.model_copy(update={"cookie_secure": True})
    with _client(secure, session_factory, store) as client:
        response = client.get("/login")
    assert response.headers["strict-transport-security"].startswith("max-age=")


def test_the_import_preview_with_passwords_is_not_stored(
    portal: PortalClient, session_factory: sessionmaker[Session]
) -> None:
    with transaction(session_factory) as session:
        make_domain(session, "hosted.example")
    csv_file = b"address,password,password_hash,quota\r\nu@hosted.example,secret-pw-1,,\r\n"
    preview = portal.post("/import/preview", files={"file": ("m.csv", csv_file, "text/csv")})
    assert "secret-pw-1" in preview.text
    assert preview.headers["cache-control"] == "no-store"


def test_no_inline_styles_or_scripts_in_the_pages(portal: PortalClient) -> None:
    # The CSP forbids them; the browser tests also watch Chromium's console for violations.
    for path in ("/", "/customers", "/mailboxes", "/login"):
        html = portal.get(path).text
        assert " style=" not in html and "<style" not in html, path
        assert "javascript:" not in html and " onclick=" not in html, path
