"""Portal login, sessions, CSRF, roles, health check and error pages, through HTTP."""
# ruff: noqa: F811  (pytest fixtures imported from portal_helpers are redefined as arguments)

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db import transaction
from app.models import LoginCounter, WebSession
from tests.factories import make_mailbox
from tests.web.portal_helpers import (  # noqa: F401  (fixtures)
    PortalClient,
    add_operator,
    admin,
    anon,
    csrf_from,
    portal_app,
    support,
)


def test_healthz_reports_database(anon: PortalClient) -> None:
    response = anon.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "database": "ok",
        "scanners": {"rspamd": "off", "clamd": "off"},
    }


def test_pages_redirect_to_login_with_next(anon: PortalClient) -> None:
    response = anon.get("/mailboxes?q=x", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/mailboxes%3Fq%3Dx"


def test_login_sets_hardened_cookie_and_rotates_session(
    anon: PortalClient, session_factory
) -> None:
    add_operator(session_factory, "alice")
    assert anon.login("alice").status_code == 303
    first_value = anon.http.cookies.get("mh_session")
    response = anon.login("alice")
    assert response.status_code == 303
    cookie = response.headers["set-cookie"]
    assert "mh_session=" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # cookie_secure is off in tests
    new_value = anon.http.cookies.get("mh_session")
    assert new_value and new_value != first_value
    with session_factory() as session:
        rows = session.scalars(select(WebSession)).all()
        assert len(rows) == 1 and rows[0].id_hash != new_value  # only the hash is stored
    assert anon.get("/").status_code == 200


def test_cookie_secure_flag_follows_settings(settings, session_factory, store) -> None:
    from web.app import create_app

    add_operator(session_factory, "alice")
    app = create_app(
        settings.model_copy(update={"cookie_secure": True}),
        session_factory=session_factory,
        store=store,
    )
    with TestClient(app, base_url="https://testserver") as client:
        response = PortalClient(client).login("alice")
    assert "Secure" in response.headers["set-cookie"]


def test_login_redirects_to_next_but_never_off_site(anon: PortalClient, session_factory) -> None:
    add_operator(session_factory, "alice")
    page = anon.get("/login?next=//evil.example/x")
    assert 'value="/"' in page.text
    token = csrf_from(page.text)
    response = anon.http.post(
        "/login",
        data={
            "username": "alice",
            "password": "correct horse",
            "csrf_token": token,
            "next": "/domains",
        },
        follow_redirects=False,
    )
    assert response.headers["location"] == "/domains"


def test_wrong_password_is_refused_and_recorded(anon: PortalClient, session_factory) -> None:
    add_operator(session_factory, "alice")
    response = anon.login("alice", "wrong password")
    assert response.status_code == 400
    assert "Wrong user name or password" in response.text
    assert 'value="alice"' in response.text  # the form keeps the user name
    with session_factory() as session:
        charged = dict(session.execute(select(LoginCounter.key, LoginCounter.charged)).all())
    assert charged == {"portal:ip:unknown": 1, "portal:user:alice": 1}
    assert anon.get("/", follow_redirects=False).status_code == 303


def test_login_without_csrf_cookie_is_refused(anon: PortalClient, session_factory) -> None:
    add_operator(session_factory, "alice")
    response = anon.http.post(
        "/login", data={"username": "alice", "password": "correct horse", "csrf_token": "x"}
    )
    assert response.status_code == 403
    assert "security token" in response.text


def test_logout_invalidates_the_session(admin: PortalClient, session_factory) -> None:
    old_cookie = admin.http.cookies.get("mh_session")
    response = admin.post("/logout")
    assert response.status_code == 303 and response.headers["location"] == "/login"
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(WebSession)) == 0
    # Replaying the old cookie gets nowhere.
    admin.http.cookies.clear()
    admin.http.cookies.set("mh_session", old_cookie)
    assert admin.get("/", follow_redirects=False).status_code == 303


def test_expired_session_is_refused(admin: PortalClient, session_factory) -> None:
    import datetime as dt

    with transaction(session_factory) as session:
        for row in session.scalars(select(WebSession)):
            row.expires_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    assert admin.get("/customers", follow_redirects=False).status_code == 303


def test_post_without_or_with_wrong_csrf_is_refused(admin: PortalClient, session_factory) -> None:
    for token in (None, "forged"):
        data = {"name": "Forged Ltd", "price_per_mailbox": "1", "currency": "EUR"}
        if token:
            data["csrf_token"] = token
        response = admin.http.post("/customers/new", data=data)
        assert response.status_code == 403
        assert "Form expired or forged" in response.text
    assert "Forged Ltd" not in admin.get("/customers").text


def test_support_cannot_create_or_delete(support: PortalClient, session_factory) -> None:
    with transaction(session_factory) as session:
        mailbox_id = make_mailbox(session, "bob@shop.example").id
    for url in (
        "/customers/new",
        "/domains/new",
        "/mailboxes/new",
        f"/mailboxes/{mailbox_id}/delete",
    ):
        page = support.get(url)
        assert page.status_code == 403, url
        assert "Not allowed for your role" in page.text
    response = support.post(f"/mailboxes/{mailbox_id}/delete")
    assert response.status_code == 403
    assert support.get(f"/mailboxes/{mailbox_id}").status_code == 200  # still there
    response = support.post("/customers/new", {"name": "Nope Ltd"})
    assert response.status_code == 403


def test_support_may_reset_password_and_suspend(support: PortalClient, session_factory) -> None:
    with transaction(session_factory) as session:
        mailbox_id = make_mailbox(session, "bob@shop.example").id
    page = support.get(f"/mailboxes/{mailbox_id}")
    assert (
        "Delete…" not in page.text and f'action="/mailboxes/{mailbox_id}/settings"' not in page.text
    )
    response = support.post(f"/mailboxes/{mailbox_id}/status", {"status": "suspended"})
    assert response.status_code == 303
    assert "badge-suspended" in support.get(f"/mailboxes/{mailbox_id}").text
    response = support.post(f"/mailboxes/{mailbox_id}/password", {"password": ""})
    assert response.status_code == 200 and "shown <strong>only this once" in response.text
    response = support.post(f"/mailboxes/{mailbox_id}/settings", {"quota_bytes": "5G"})
    assert response.status_code == 403


def test_unknown_pages_and_ids_get_the_404_page(admin: PortalClient) -> None:
    for url in (
        "/nowhere",
        "/customers/9999",
        "/domains/9999",
        "/mailboxes/9999",
        "/aliases/9999",
        "/mailboxes/not-a-number",
        "/mailboxes?domain=9999",
    ):
        response = admin.get(url)
        assert response.status_code == 404, url
        assert "Not found" in response.text and "<html" in response.text
    response = admin.post("/mailboxes/9999/status", {"status": "suspended"})
    assert response.status_code == 404


def test_static_assets_are_served_locally(anon: PortalClient) -> None:
    assert anon.get("/static/portal.css").status_code == 200
    htmx = anon.get("/static/htmx.min.js")
    assert htmx.status_code == 200 and "htmx" in htmx.text[:200]
    assert 'src="/static/htmx.min.js"' in anon.get("/login").text


def test_over_budget_logins_are_refused_at_once_with_429(settings, session_factory, store) -> None:
    from web.app import create_app

    add_operator(session_factory, "alice")
    cfg = settings.model_copy(update={"login_address_budget": 3})
    app = create_app(cfg, session_factory=session_factory, store=store)
    attacker = PortalClient(TestClient(app, client=("192.0.2.66", 40000)))
    # (password, expected status): three wrong guesses are checked, then even the right
    # password is refused without being checked, with the time to wait.
    for password, status in [
        ("wrong 1", 400),
        ("wrong 2", 400),
        ("wrong 3", 400),
        ("wrong 4", 429),
        ("correct horse", 429),
    ]:
        response = attacker.login("alice", password)
        assert response.status_code == status, (password, response.text)
    assert "Too many failed logins from your address" in response.text
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    # The operator at another address is let in at once.
    operator = PortalClient(TestClient(app, client=("198.51.100.5", 40000)))
    assert operator.login("alice").status_code == 303


def test_healthz_reports_unreachable_database(settings, store) -> None:
    from app.db import make_engine, make_session_factory
    from web.app import create_app

    dead = settings.model_copy(update={"database_url": "postgresql://postgres@127.0.0.1:1/nothing"})
    app = create_app(dead, session_factory=make_session_factory(make_engine(dead)), store=store)
    with TestClient(app) as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "error", "database": "unreachable"}
