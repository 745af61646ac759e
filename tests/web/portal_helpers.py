"""Portal test helpers: the app over a real database, logged-in clients, CSRF-aware posts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MaildirStore
from tests.factories import DEFAULT_PASSWORD, make_operator
from web.app import create_app

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "page has no CSRF field"
    return match.group(1)


class PortalClient:
    """A TestClient with a logged-in operator; ``post`` adds the session's CSRF token."""

    def __init__(self, client: TestClient) -> None:
        self.http = client
        self.csrf = ""

    def login(self, username: str, password: str = DEFAULT_PASSWORD) -> httpx.Response:
        page = self.http.get("/login")
        response = self.http.post(
            "/login",
            data={"username": username, "password": password, "csrf_token": csrf_from(page.text)},
            follow_redirects=False,
        )
        if response.status_code == 303:
            self.csrf = csrf_from(self.http.get("/").text)
        return response

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.http.get(url, **kwargs)

    def post(self, url: str, data: dict[str, Any] | None = None, **kwargs: Any) -> httpx.Response:
        kwargs.setdefault("follow_redirects", False)
        return self.http.post(url, data={"csrf_token": self.csrf, **(data or {})}, **kwargs)


def add_operator(factory: sessionmaker[Session], username: str, role: str = "admin") -> None:
    with transaction(factory) as session:
        make_operator(session, username, role=role)


@pytest.fixture
def portal_app(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> Any:
    return create_app(settings, session_factory=session_factory, store=store)


@pytest.fixture
def anon(portal_app: Any) -> Iterator[PortalClient]:
    with TestClient(portal_app) as client:
        yield PortalClient(client)


@pytest.fixture
def admin(portal_app: Any, session_factory: sessionmaker[Session]) -> Iterator[PortalClient]:
    add_operator(session_factory, "alice", "admin")
    with TestClient(portal_app) as client:
        portal = PortalClient(client)
        assert portal.login("alice").status_code == 303
        yield portal


@pytest.fixture
def support(portal_app: Any, session_factory: sessionmaker[Session]) -> Iterator[PortalClient]:
    add_operator(session_factory, "sam", "support")
    with TestClient(portal_app) as client:
        portal = PortalClient(client)
        assert portal.login("sam").status_code == 303
        yield portal


def field_error(html: str, field: str) -> str | None:
    """The error text shown next to form field ``field``, if any."""
    match = re.search(rf'<p id="e-{re.escape(field)}" class="error" role="alert">([^<]*)</p>', html)
    return match.group(1) if match else None


def input_value(html: str, field: str) -> str | None:
    match = re.search(
        rf'id="f-{re.escape(field)}" name="{re.escape(field)}"[^>]*?value="([^"]*)"', html, re.S
    )
    return match.group(1) if match else None
