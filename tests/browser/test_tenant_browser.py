"""Customer administrators and two-factor login in headless Chromium (issue 15)."""

from __future__ import annotations

import re
import time
from typing import Any

import pyotp
import pytest

from tests.browser.conftest import LiveServer, shot
from tests.web.tenant_helpers import make_tenant

pytestmark = pytest.mark.browser
PASSWORD = "correct horse"  # tests/factories.DEFAULT_PASSWORD


def _login(page: Any, base: str, username: str, lands_on: str) -> None:
    page.goto(f"{base}/login")
    page.fill("#username", username)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}{lands_on}")


def test_customer_admin_creates_a_mailbox_cannot_reach_another_customers_and_sees_billing(
    live: LiveServer, page: Any
) -> None:
    acme = make_tenant(live.session_factory, "acme", "acme.example")
    globex = make_tenant(live.session_factory, "globex", "globex.example")

    _login(page, live.url, acme.admin, "/my")
    assert "acme.example" in page.inner_text("main")
    assert "globex" not in page.content()
    preview = page.inner_text("#billing-preview")
    assert "This month so far" in preview and "Active mailboxes" in preview
    shot(page, "40-customer-admin-home")

    page.click("nav >> text=Mailboxes")
    page.click("text=New mailbox")
    page.fill("#f-address", "newbie@acme.example")
    page.fill("#f-password", "a long password")
    page.click("button:has-text('Create mailbox')")
    page.wait_for_selector("text=Created.")
    assert "newbie@acme.example" in page.inner_text("h1")
    shot(page, "41-customer-admin-mailbox")

    # Editing the URL to another customer's mailbox: the same 404 as for no mailbox at all.
    response = page.goto(f"{live.url}/my/mailboxes/{globex.mailbox_id}")
    assert response is not None and response.status == 404
    assert "Not found" in page.inner_text("main") and "globex" not in page.content()
    # ... and the ISP's own pages do not exist for them either.
    response = page.goto(f"{live.url}/mailboxes/{globex.mailbox_id}")
    assert response is not None and response.status == 404

    page.goto(f"{live.url}/my/audit")
    assert "mailbox.create" in page.inner_text("#audit")


def test_totp_enrolment_and_login(live: LiveServer, page: Any) -> None:
    page.goto(f"{live.url}/login")
    page.fill("#username", "alice")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live.url}/")
    page.goto(f"{live.url}/account/totp")
    page.click("#totp-start")
    page.wait_for_selector("#qr svg")
    assert page.locator("#qr svg").bounding_box()["width"] > 100  # a real, visible QR code
    secret = page.inner_text("#totp-secret").strip()
    shot(page, "42-totp-enrol")
    page.fill("#f-code", pyotp.TOTP(secret).now())
    page.click("button:has-text('Turn on')")
    page.wait_for_selector("#recovery-codes")
    codes = re.findall(
        r"[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4}", page.inner_text("#recovery-codes")
    )
    assert len(codes) == 10
    page.click("button:has-text('Log out')")
    page.wait_for_url(f"{live.url}/login")

    page.fill("#username", "alice")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live.url}/login/totp")
    page.fill("#code", "000000")
    page.click("button[type=submit]")
    page.wait_for_selector("text=This code is not valid")
    # The next step's code: the current one was spent on the enrolment (no replay).
    page.fill("#code", pyotp.TOTP(secret).at(time.time() + 30))
    page.click("button[type=submit]")
    page.wait_for_url(f"{live.url}/")
    assert "alice" in page.inner_text(".whoami")
    shot(page, "43-totp-logged-in")


def test_customer_admin_sets_a_users_auto_reply_and_makes_an_api_token(
    live: LiveServer, page: Any
) -> None:
    acme = make_tenant(live.session_factory, "acme", "acme.example")
    globex = make_tenant(live.session_factory, "globex", "globex.example")
    _login(page, live.url, acme.admin, "/my")
    page.goto(f"{live.url}/my/mailboxes/{acme.mailbox_id}")
    page.click("#rules-link")
    page.wait_for_url(f"{live.url}/my/mailboxes/{acme.mailbox_id}/auto-reply")
    page.fill("#f-subject", "Out of office")
    page.fill("#f-body", "Back on Monday.")
    page.fill("#f-ends_on", "2027-06-30")
    page.click("button:has-text('Save auto-reply')")
    page.wait_for_url(re.compile(r".*/auto-reply\?done=saved$"))
    assert "On, from now to 2027-06-30" in page.inner_text("#auto-reply-state")
    shot(page, "43-customer-admin-auto-reply")
    response = page.goto(f"{live.url}/my/mailboxes/{globex.mailbox_id}/auto-reply")
    assert response is not None and response.status == 404
    assert "globex" not in page.content()

    page.goto(f"{live.url}/my/tokens")
    page.click("text=New token")
    page.fill("#f-name", "acme crm")
    page.click("button:has-text('Create token')")
    secret = page.inner_text("#token-secret").strip()
    assert secret.startswith("mh_")
    page.click("text=Done")
    assert "acme crm" in page.inner_text("main") and "globex" not in page.content()
