"""Two-factor login through the portal (issue 15): enrolment with a server-rendered QR code,
recovery codes shown once, the code step at /login/totp (throttled, no replay), the
operator setting that requires it, and the CLI reset."""

from __future__ import annotations

import re
import time
from typing import Any

import pyotp
from fastapi.testclient import TestClient

from app.config import Settings
from app.db import transaction
from app.services import totp
from app.services.audit import CLI_ACTOR
from tests.factories import DEFAULT_PASSWORD
from tests.web.portal_helpers import PortalClient, add_operator, csrf_from, portal_app  # noqa: F401
from tests.web.tenant_helpers import make_tenant
from web.app import create_app


def _enrol(portal: PortalClient, base: str = "") -> tuple[str, list[str]]:
    assert "is <strong>off</strong>" in portal.get(f"{base}/account/totp").text
    assert portal.post(f"{base}/account/totp/start").status_code == 303
    page = portal.get(f"{base}/account/totp").text
    assert "<svg" in page and "<path" in page  # the QR code, rendered by the server
    secret = re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', page)
    assert secret
    wrong = portal.post(f"{base}/account/totp/confirm", {"code": "000000"})
    assert wrong.status_code == 422 and "not valid" in wrong.text
    done = portal.post(f"{base}/account/totp/confirm", {"code": pyotp.TOTP(secret.group(1)).now()})
    assert done.status_code == 200 and done.headers["cache-control"] == "no-store"
    codes = re.findall(r"<li><code>([a-z0-9-]+)</code></li>", done.text)
    assert len(codes) == totp.RECOVERY_CODES
    # Shown once: the page does not show them again.
    assert codes[0] not in portal.get(f"{base}/account/totp").text
    return secret.group(1), codes


def _password_step(client: TestClient, username: str) -> Any:
    page = client.get("/login")
    return client.post(
        "/login",
        data={
            "username": username,
            "password": DEFAULT_PASSWORD,
            "csrf_token": csrf_from(page.text),
        },
        follow_redirects=False,
    )


def _code_step(client: TestClient, code: str) -> Any:
    page = client.get("/login/totp")
    return client.post(
        "/login/totp",
        data={"code": code, "csrf_token": csrf_from(page.text)},
        follow_redirects=False,
    )


def test_operator_enrols_then_needs_a_code_and_recovery_codes_work_once(
    portal_app: Any,  # noqa: F811
) -> None:
    add_operator(portal_app.state.session_factory, "olga")
    with TestClient(portal_app) as client:
        portal = PortalClient(client)
        assert portal.login("olga").status_code == 303
        secret, codes = _enrol(portal)
    with TestClient(portal_app) as client:
        step = _password_step(client, "olga")
        assert step.status_code == 303 and step.headers["location"] == "/login/totp"
        # The password alone opens nothing.
        assert client.get("/", follow_redirects=False).status_code == 303
        assert _code_step(client, "123456").status_code == 400
        # The next step's code (the current one was used for the enrolment: no replay).
        code = pyotp.TOTP(secret).at(time.time() + 30)
        ok = _code_step(client, code)
        assert ok.status_code == 303, ok.text
        assert client.get("/").status_code == 200
    with TestClient(portal_app) as client:
        _password_step(client, "olga")
        assert _code_step(client, code).status_code == 400  # replayed
        assert _code_step(client, codes[0]).status_code == 303
    with TestClient(portal_app) as client:
        _password_step(client, "olga")
        assert _code_step(client, codes[0]).status_code == 400  # used up
    # Reset (lost phone): the password is enough again.
    with transaction(portal_app.state.session_factory) as session:
        from app.services import accounts

        op = accounts.get_operator_by_username(session, username="olga")
        assert totp.reset(session, actor=CLI_ACTOR, owner=totp.Owner("operator", op.id, "olga"))
    with TestClient(portal_app) as client:
        assert _password_step(client, "olga").headers["location"] == "/"


def test_code_guesses_are_throttled(portal_app: Any) -> None:  # noqa: F811
    add_operator(portal_app.state.session_factory, "tom")
    with TestClient(portal_app) as client:
        portal = PortalClient(client)
        portal.login("tom")
        _enrol(portal)
    with TestClient(portal_app) as client:
        _password_step(client, "tom")
        budget = portal_app.state.settings.login_address_budget
        statuses = [_code_step(client, "000000").status_code for _ in range(budget + 1)]
    assert statuses[:budget] == [400] * budget and statuses[-1] == 429


def test_customer_admin_enrols_and_logs_in_with_a_code(portal_app: Any) -> None:  # noqa: F811
    tenant = make_tenant(portal_app.state.session_factory, "acme", "acme.example")
    with TestClient(portal_app) as client:
        portal = PortalClient(client)
        assert portal.login(tenant.admin).status_code == 303
        secret, _ = _enrol(portal, "/my")
    with TestClient(portal_app) as client:
        assert _password_step(client, tenant.admin).headers["location"] == "/login/totp"
        response = _code_step(client, pyotp.TOTP(secret).at(time.time() + 30))
        assert response.status_code == 303
        assert "acme.example" in client.get("/my").text


def test_the_setting_sends_admins_to_enrolment_first(
    settings: Settings, session_factory: Any, store: Any
) -> None:
    app = create_app(
        settings.model_copy(update={"totp_required_for_admins": True}),
        session_factory=session_factory,
        store=store,
    )
    add_operator(session_factory, "ada", "admin")
    add_operator(session_factory, "sue", "support")
    with TestClient(app) as client:
        portal = PortalClient(client)
        assert portal.login("ada").status_code == 303
        blocked = client.get("/customers", follow_redirects=False)
        assert blocked.status_code == 303 and blocked.headers["location"] == "/account/totp"
        assert "requires two-factor login" in client.get("/account/totp").text
        _enrol(portal)
        assert client.get("/customers").status_code == 200
    with TestClient(app) as client:  # support operators are not admins: not required
        PortalClient(client).login("sue")
        assert client.get("/customers", follow_redirects=False).status_code == 200


def test_code_guesses_spend_an_account_budget_a_right_password_does_not_renew(
    settings: Settings, session_factory: Any, store: Any
) -> None:
    # Like passwords: a guesser with many addresses meets the account's budget (its own key,
    # 2fa:<name>), and entering the right password again buys no fresh guesses; over budget
    # even the right code is refused without being looked at.
    app = create_app(
        settings.model_copy(update={"login_address_budget": 100, "login_account_budget": 3}),
        session_factory=session_factory,
        store=store,
    )
    add_operator(session_factory, "tim")
    with TestClient(app) as client:
        portal = PortalClient(client)
        portal.login("tim")
        secret, _ = _enrol(portal)
    with TestClient(app) as client:
        assert _password_step(client, "tim").headers["location"] == "/login/totp"
        assert [_code_step(client, "000000").status_code for _ in range(3)] == [400] * 3
        assert _password_step(client, "tim").headers["location"] == "/login/totp"
        right = _code_step(client, pyotp.TOTP(secret).at(time.time() + 30))
        assert right.status_code == 429 and int(right.headers["retry-after"]) > 0
        assert client.get("/", follow_redirects=False).status_code == 303  # not logged in
