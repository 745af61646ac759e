"""The portal in headless Chromium: what an operator does and sees, end to end."""

from __future__ import annotations

import re
import smtplib
from typing import Any

import pytest

from tests.browser.conftest import LiveServer, login, shot

pytestmark = pytest.mark.browser


def test_provision_and_see_delivered_mail_usage(live: LiveServer, page: Any) -> None:
    base = live.url
    page.goto(f"{base}/customers")
    assert "/login" in page.url  # not logged in: sent to the login page
    shot(page, "01-login")
    login(page, base, "alice")
    shot(page, "02-dashboard")

    page.click("text=Customers")
    page.click("text=New customer")
    page.fill("#f-name", "Bakery Müller")
    page.fill("#f-price_per_mailbox", "2.50")
    page.click("button:has-text('Create customer')")
    page.wait_for_selector("text=Created.")
    shot(page, "03-customer")

    page.click("text=Add domain")
    page.fill("#f-name", "bäckerei.example")
    page.click("button:has-text('Create domain')")
    page.wait_for_selector("h1:has-text('bäckerei.example')")
    assert "xn--bckerei-5wa.example" in page.content()
    assert "10 mx.mailhost.example." in page.inner_text("#dns")
    shot(page, "04-domain")

    # DKIM: generate an Ed25519 key; the DNS panel shows the record to publish.
    page.select_option("#f-algorithm", "ed25519")
    page.click("button:has-text('Generate signing key')")
    page.wait_for_selector("text=Created.")
    dns = page.inner_text("#dns")
    assert re.search(r"mh\d{8}\._domainkey\.xn--bckerei-5wa\.example\.", dns)
    assert "v=DKIM1; k=ed25519; p=" in dns
    assert "v=DMARC1; p=none" in dns
    assert page.is_visible("button:has-text('Rotate: new signing key')")
    shot(page, "04b-dns-panel")

    page.click("text=add mailbox")
    page.fill("#f-address", "anna@bäckerei.example")
    page.fill("#f-password", "anna's secret")
    page.click("button:has-text('Create mailbox')")
    page.wait_for_selector("text=Created.")
    mailbox_url = page.url.split("?")[0]
    assert page.inner_text("#usage-messages") == "0"

    message = b"From: x@remote.example\r\nSubject: hello\r\n\r\n" + b"Hello Anna!\r\n" * 50
    with smtplib.SMTP("127.0.0.1", live.smtp_port, timeout=10) as smtp:
        refused = smtp.sendmail("x@remote.example", ["anna@xn--bckerei-5wa.example"], message)
    assert refused == {}

    page.goto(mailbox_url)
    assert page.inner_text("#usage-messages") == "1"
    assert re.search(r"\d+(\.\d)? (B|KiB)", page.inner_text("#usage"))
    shot(page, "05-mailbox")
    page.goto(f"{base}/mailboxes")
    assert "1 msg" in page.inner_text("#results")
    shot(page, "06-mailboxes")
    page.goto(f"{base}/audit")
    shot(page, "07-audit")


def test_csv_import_with_preview(live: LiveServer, page: Any, tmp_path) -> None:
    from app.db import transaction
    from tests.factories import make_domain

    with transaction(live.session_factory) as session:
        make_domain(session, "import.example")
    good = tmp_path / "good.csv"
    good.write_text(
        "address,password,password_hash,quota\n"
        "one@import.example,first password,,1G\n"
        "two@import.example,second password,,\n"
    )
    bad = tmp_path / "bad.csv"
    bad.write_text("address,password,password_hash,quota\nthree@nowhere.example,third pw 123,,\n")
    login(page, live.url, "alice")
    page.click("text=Import")
    page.set_input_files("#f-file", str(bad))
    page.click("button:has-text('Preview')")
    assert "1 of 1 rows are wrong" in page.inner_text("#import-errors")
    assert page.locator("button:has-text('Create')").count() == 0
    shot(page, "08-import-errors")

    page.click("text=Upload another file")
    page.set_input_files("#f-file", str(good))
    page.click("button:has-text('Preview')")
    page.wait_for_selector("text=All 2 rows are valid")
    shot(page, "09-import-preview")
    page.click("button:has-text('Create 2 mailboxes')")
    page.wait_for_selector("text=2 mailboxes imported")
    text = page.inner_text("#results")
    assert "one@import.example" in text and "two@import.example" in text


def test_support_operator_view(live: LiveServer, page: Any) -> None:
    from app.db import transaction
    from tests.factories import make_mailbox

    with transaction(live.session_factory) as session:
        mailbox_id = make_mailbox(session, "help@support.example").id
    login(page, live.url, "sam")
    page.click("text=Customers")
    assert page.locator("text=New customer").count() == 0
    page.goto(f"{live.url}/mailboxes/{mailbox_id}")
    assert page.locator("text=Delete…").count() == 0
    page.click("button:has-text('Suspend')")
    page.wait_for_selector("text=Suspended.")
    page.click("button:has-text('Set password')")  # both fields empty: generate one
    password = page.inner_text("#generated-password")
    assert len(password) >= 12
    shot(page, "10-support-password")
    page.goto(f"{live.url}/mailboxes/{mailbox_id}/delete")
    assert "Not allowed for your role" in page.content()
    shot(page, "11-support-refused")


def test_operator_changes_own_password(live: LiveServer, page: Any) -> None:
    base = live.url
    login(page, base, "sam")
    page.click("#account-link")
    page.wait_for_url(f"{base}/account")
    page.fill("#f-current_password", "wrong guess")
    page.fill("#f-new_password", "sam's new passphrase")
    page.fill("#f-new_password_confirm", "sam's new passphrase")
    page.click("button:has-text('Change password')")
    assert "not your current password" in page.inner_text("#e-current_password")
    page.fill("#f-current_password", "correct horse")
    page.fill("#f-new_password", "sam's new passphrase")
    page.fill("#f-new_password_confirm", "sam's new passphrase")
    page.click("button:has-text('Change password')")
    page.wait_for_selector("text=Your password was changed")
    shot(page, "12-own-password-changed")
    page.click("button:has-text('Log out')")
    page.wait_for_url(f"{base}/login")
    login(page, base, "sam", "sam's new passphrase")
    assert "sam" in page.inner_text(".whoami")
