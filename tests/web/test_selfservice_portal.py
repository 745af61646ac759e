"""The mailbox user's area at /me through HTTP: login (throttled like POP3), its own cookie
that never opens the operator portal, password change, forwarding and auto-reply forms."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.models import Mailbox
from app.passwords import verify_password
from app.services import selfservice
from tests.factories import DEFAULT_PASSWORD, make_mailbox
from tests.web.portal_helpers import admin, csrf_from, portal_app  # noqa: F401

ADDRESS = "user@hosted.example"


class MeClient:
    def __init__(self, client: TestClient) -> None:
        self.http = client
        self.csrf = ""

    def login(self, address: str = ADDRESS, password: str = DEFAULT_PASSWORD) -> httpx.Response:
        page = self.http.get("/me/login")
        response = self.http.post(
            "/me/login",
            data={"address": address, "password": password, "csrf_token": csrf_from(page.text)},
            follow_redirects=False,
        )
        if response.status_code == 303:
            self.csrf = csrf_from(self.http.get("/me").text)
        return response

    def post(self, url: str, data: dict[str, Any]) -> httpx.Response:
        return self.http.post(url, data={"csrf_token": self.csrf, **data}, follow_redirects=False)


@pytest.fixture
def mailbox_id(session_factory: sessionmaker[Session]) -> int:
    with transaction(session_factory) as s:
        return make_mailbox(s, ADDRESS, quota=10 * 1024 * 1024).id


@pytest.fixture
def me(portal_app: Any, mailbox_id: int) -> Iterator[MeClient]:  # noqa: F811
    with TestClient(portal_app) as client:
        yield MeClient(client)


def test_login_shows_usage_and_never_opens_the_operator_portal(me: MeClient) -> None:
    assert me.http.get("/me", follow_redirects=False).headers["location"] == "/me/login"
    assert me.login(password="wrong password").status_code == 400
    response = me.login()
    assert response.status_code == 303
    assert (
        "mh_me" in response.headers["set-cookie"] and "Path=/me" in response.headers["set-cookie"]
    )
    page = me.http.get("/me").text
    assert "0 B in 0 messages" in page and "10.0 MiB" in page
    # The operator portal does not know this session.
    assert me.http.get("/", follow_redirects=False).headers["location"].startswith("/login")
    assert me.http.get("/mailboxes", follow_redirects=False).status_code == 303


def test_an_operator_session_does_not_open_me(admin: Any) -> None:  # noqa: F811
    response = admin.get("/me", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/me/login"


def test_login_uses_the_pop3_budget(me: MeClient, portal_app: Any) -> None:  # noqa: F811
    budget = portal_app.state.settings.login_address_budget
    for _ in range(budget):
        assert me.login(password="wrong password").status_code == 400
    refused = me.login()
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1


def test_password_change_needs_the_current_one(
    me: MeClient, session_factory: sessionmaker[Session], mailbox_id: int
) -> None:
    me.login()
    new = "a new long password"
    wrong = me.post(
        "/me/password",
        {"current_password": "not it", "new_password": new, "repeat_password": new},
    )
    assert wrong.status_code == 400 and "the current password is wrong" in wrong.text
    short = me.post(
        "/me/password",
        {"current_password": DEFAULT_PASSWORD, "new_password": "x", "repeat_password": "x"},
    )
    assert short.status_code == 400 and "at least 8 characters" in short.text
    ok = me.post(
        "/me/password",
        {"current_password": DEFAULT_PASSWORD, "new_password": new, "repeat_password": new},
    )
    assert ok.status_code == 303
    with session_factory() as s:
        box = s.get(Mailbox, mailbox_id)
        assert box is not None and verify_password(new, box.password_hash)[0]


def test_forwarding_and_auto_reply_forms(
    me: MeClient, session_factory: sessionmaker[Session], mailbox_id: int
) -> None:
    me.login()
    bad = me.post("/me/forward", {"forward_to": "not an address"})
    assert bad.status_code == 400 and "invalid address" in bad.text
    itself = me.post("/me/forward", {"forward_to": ADDRESS.upper()})
    assert itself.status_code == 400 and "cannot forward to itself" in itself.text
    assert me.post("/me/forward", {"forward_to": "me@remote.example"}).status_code == 303
    backwards = me.post(
        "/me/autoreply",
        {
            "enabled": "on",
            "subject": "Away",
            "body": "Back soon.",
            "starts_on": "2026-12-10",
            "ends_on": "2026-12-01",
        },
    )
    assert backwards.status_code == 400 and "end date is before the start date" in backwards.text
    baddate = me.post("/me/autoreply", {"subject": "Away", "body": "x", "starts_on": "10.12."})
    assert baddate.status_code == 400 and "YYYY-MM-DD" in baddate.text
    saved = me.post(
        "/me/autoreply",
        {"enabled": "on", "subject": "Away", "body": "Back soon.", "ends_on": "2026-12-24"},
    )
    assert saved.status_code == 303
    page = me.http.get("/me").text
    assert "forwarded to me@remote.example; no copy stays here" in page
    assert "On, from now to 2026-12-24" in page
    with session_factory() as s:
        forward = selfservice.get_forward(s, mailbox_id=mailbox_id)
        reply = selfservice.get_auto_reply(s, mailbox_id=mailbox_id)
    assert forward is not None and not forward.keep_copy and not forward.hosted
    assert reply is not None and reply.subject == "Away" and reply.starts_on is None
    assert me.post("/me/forward", {"action": "clear"}).status_code == 303
    assert "Not forwarded." in me.http.get("/me").text


def test_forms_without_the_user_csrf_token_change_nothing(
    me: MeClient, session_factory: sessionmaker[Session], mailbox_id: int
) -> None:
    me.login()
    me.csrf = "forged"
    assert me.post("/me/forward", {"forward_to": "me@remote.example"}).status_code == 403
    with session_factory() as s:
        assert selfservice.get_forward(s, mailbox_id=mailbox_id) is None
