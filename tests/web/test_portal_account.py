"""Operators' own password (Account page) and an admin's reset of another's, through HTTP."""
# ruff: noqa: F811  (pytest fixtures imported from portal_helpers are redefined as arguments)

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.models import AuditEntry, LoginCounter, Operator, WebSession
from app.passwords import verify_password
from tests.factories import DEFAULT_PASSWORD
from tests.web.portal_helpers import (  # noqa: F401  (fixtures)
    PortalClient,
    add_operator,
    admin,
    anon,
    csrf_from,
    field_error,
    portal_app,
    support,
)

NEW_PASSWORD = "a much better passphrase"


def password_is(factory: sessionmaker[Session], username: str, password: str) -> bool:
    with factory() as session:
        operator = session.scalars(select(Operator).where(Operator.username == username)).one()
        return verify_password(password, operator.password_hash)[0]


def session_count(factory: sessionmaker[Session], username: str) -> int:
    with factory() as session:
        return len(
            session.scalars(
                select(WebSession)
                .join(Operator, WebSession.operator_id == Operator.id)
                .where(Operator.username == username)
            ).all()
        )


def operator_id(factory: sessionmaker[Session], username: str) -> int:
    with factory() as session:
        return session.scalars(select(Operator.id).where(Operator.username == username)).one()


def change(client: PortalClient, **fields: str) -> Any:
    data = {
        "current_password": DEFAULT_PASSWORD,
        "new_password": NEW_PASSWORD,
        "new_password_confirm": NEW_PASSWORD,
    }
    data.update(fields)
    return client.post("/account/password", data)


@pytest.fixture
def second_browser(portal_app: Any) -> Iterator[PortalClient]:
    """Another browser (another machine) for an operator the test logs in itself."""
    with TestClient(portal_app) as client:
        yield PortalClient(client)


def test_account_page_linked_in_header_for_every_role(
    admin: PortalClient, support: PortalClient
) -> None:
    for client in (admin, support):
        home = client.get("/")
        assert re.search(r'<a href="/account"[^>]*>Account</a>', home.text)
        page = client.get("/account")
        assert page.status_code == 200
        for name in ("current_password", "new_password", "new_password_confirm"):
            assert f'name="{name}" type="password"' in page.text


def test_support_changes_own_password_session_rotated_and_audited(
    support: PortalClient, session_factory: sessionmaker[Session]
) -> None:
    old_cookie = support.http.cookies.get("mh_session")
    response = change(support)
    assert response.status_code == 303
    assert response.headers["location"] == "/account?done=own_password"
    new_cookie = support.http.cookies.get("mh_session")
    assert new_cookie and new_cookie != old_cookie
    assert "HttpOnly" in response.headers["set-cookie"]
    page = support.get(response.headers["location"])
    assert page.status_code == 200
    assert "Your password was changed" in page.text
    assert password_is(session_factory, "sam", NEW_PASSWORD)
    assert not password_is(session_factory, "sam", DEFAULT_PASSWORD)
    assert session_count(session_factory, "sam") == 1  # only the rotated one
    with session_factory() as session:
        entry = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "operator.password")
        ).one()
        assert (entry.actor, entry.object_name) == ("sam", "sam")
        assert entry.detail == "changed own password"
    # The old cookie is dead; logging in works with the new password only.
    with TestClient(support.http.app) as other:
        other.cookies.set("mh_session", str(old_cookie))
        assert other.get("/", follow_redirects=False).status_code == 303
        fresh = PortalClient(other)
        assert fresh.login("sam", DEFAULT_PASSWORD).status_code == 400
        assert fresh.login("sam", NEW_PASSWORD).status_code == 303


def test_other_sessions_of_the_operator_are_logged_out(
    admin: PortalClient,
    second_browser: PortalClient,
    session_factory: sessionmaker[Session],
) -> None:
    add_operator(session_factory, "bob", "admin")
    assert second_browser.login("alice").status_code == 303
    with TestClient(admin.http.app) as bob_browser:
        bob = PortalClient(bob_browser)
        assert bob.login("bob").status_code == 303
        assert session_count(session_factory, "alice") == 2
        assert change(admin).status_code == 303
        assert session_count(session_factory, "alice") == 1
        # The other machine: its page loads now go to the login page, its forms do nothing.
        gone = second_browser.get("/customers", follow_redirects=False)
        assert gone.status_code == 303 and gone.headers["location"].startswith("/login")
        refused = second_browser.post("/customers/new", {"name": "Sneaky", "price": "1"})
        assert refused.status_code == 303 and refused.headers["location"].startswith("/login")
        # Another operator's session is untouched.
        assert bob.get("/").status_code == 200
    # This browser continues, with the new session's CSRF token in its forms.
    home = admin.get("/")
    assert home.status_code == 200
    admin.csrf = re.search(r'name="csrf_token" value="([^"]+)"', home.text).group(1)  # type: ignore[union-attr]
    assert admin.post("/logout").status_code == 303


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"current_password": "not my password"}, "current_password", "not your current"),
        ({"current_password": ""}, "current_password", "not your current"),
        ({"new_password_confirm": "something else"}, "new_password_confirm", "differ"),
        (
            {"new_password": "short", "new_password_confirm": "short"},
            "new_password",
            "at least 8 characters",
        ),
    ],
    ids=["wrong-current", "empty-current", "mismatch", "too-short"],
)
def test_refused_change_shows_error_at_field_and_saves_nothing(
    admin: PortalClient,
    session_factory: sessionmaker[Session],
    fields: dict[str, str],
    field: str,
    message: str,
) -> None:
    cookie = admin.http.cookies.get("mh_session")
    response = change(admin, **fields)
    assert response.status_code == 422
    error = field_error(response.text, field)
    assert error is not None and message in error, response.text
    assert "Your password was changed" not in response.text
    assert NEW_PASSWORD not in response.text and DEFAULT_PASSWORD not in response.text
    assert password_is(session_factory, "alice", DEFAULT_PASSWORD)
    assert admin.http.cookies.get("mh_session") == cookie
    assert admin.get("/").status_code == 200  # still logged in, session not rotated
    with session_factory() as session:
        assert (
            session.scalars(
                select(AuditEntry).where(AuditEntry.action == "operator.password")
            ).all()
            == []
        )
        counter = session.get(LoginCounter, "portal:user:alice")
        # Only a wrong current password counts as a failed login (the others give the
        # reserved attempt back; the login of the fixture gave its own back too).
        assert counter is not None
        assert counter.charged == (1 if field == "current_password" else 0)


def test_change_without_valid_csrf_token_is_refused(
    admin: PortalClient, session_factory: sessionmaker[Session]
) -> None:
    for token in (None, "forged"):
        data = {
            "current_password": DEFAULT_PASSWORD,
            "new_password": NEW_PASSWORD,
            "new_password_confirm": NEW_PASSWORD,
        }
        if token is not None:
            data["csrf_token"] = token
        response = admin.http.post("/account/password", data=data, follow_redirects=False)
        assert response.status_code == 403
        assert "security token" in response.text
    assert password_is(session_factory, "alice", DEFAULT_PASSWORD)


def test_admin_resets_another_operators_password_shown_once(
    admin: PortalClient,
    second_browser: PortalClient,
    session_factory: sessionmaker[Session],
) -> None:
    add_operator(session_factory, "sam", "support")
    assert second_browser.login("sam").status_code == 303
    sam_id = operator_id(session_factory, "sam")
    listing = admin.get("/operators")
    assert f'href="/operators/{sam_id}/password"' in listing.text
    confirm = admin.get(f"/operators/{sam_id}/password")
    assert confirm.status_code == 200 and "Reset the password of sam" in confirm.text
    response = admin.post(f"/operators/{sam_id}/password")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    match = re.search(r'<code id="generated-password">([^<]+)</code>', response.text)
    assert match
    generated = match.group(1)
    assert len(generated) >= 12
    assert password_is(session_factory, "sam", generated)
    assert not password_is(session_factory, "sam", DEFAULT_PASSWORD)
    # sam is logged out everywhere; the admin is not.
    assert second_browser.get("/", follow_redirects=False).status_code == 303
    assert session_count(session_factory, "sam") == 0
    assert admin.get("/").status_code == 200
    assert second_browser.login("sam", generated).status_code == 303
    with session_factory() as session:
        entry = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "operator.password")
        ).one()
        assert (entry.actor, entry.object_name) == ("alice", "sam")
    # Shown once: the operators page does not show it again.
    assert generated not in admin.get("/operators").text


def test_support_may_not_reset_anothers_password(
    support: PortalClient, session_factory: sessionmaker[Session]
) -> None:
    add_operator(session_factory, "alice", "admin")
    alice_id = operator_id(session_factory, "alice")
    assert f"/operators/{alice_id}/password" not in support.get("/operators").text
    assert support.get(f"/operators/{alice_id}/password").status_code == 403
    response = support.post(f"/operators/{alice_id}/password")
    assert response.status_code == 403
    assert "Not allowed for your role" in response.text
    assert password_is(session_factory, "alice", DEFAULT_PASSWORD)


def test_reset_refusals_admin(admin: PortalClient, session_factory: sessionmaker[Session]) -> None:
    add_operator(session_factory, "sam", "support")
    sam_id = operator_id(session_factory, "sam")
    # Without the CSRF token: refused, nothing changed.
    forged = admin.http.post(
        f"/operators/{sam_id}/password", data={"csrf_token": "x"}, follow_redirects=False
    )
    assert forged.status_code == 403
    assert password_is(session_factory, "sam", DEFAULT_PASSWORD)
    # Unknown operator: the 404 page.
    assert admin.post("/operators/999999/password").status_code == 404
    assert admin.get("/operators/999999/password").status_code == 404
    # Your own password goes through the Account page (it asks for the current one).
    own = operator_id(session_factory, "alice")
    response = admin.post(f"/operators/{own}/password")
    assert response.status_code == 303 and response.headers["location"] == "/account"
    assert password_is(session_factory, "alice", DEFAULT_PASSWORD)
