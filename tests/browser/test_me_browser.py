"""A mailbox user in headless Chromium: logs in at /me, sets an auto-reply; a message sent
to them through the real MX gets exactly one auto-reply, a second from the same sender none.

The sender is a hosted mailbox, so the auto-reply travels the whole way: queued by the MX,
delivered by the delivery agent into the sender's Maildir, where it is counted.
"""

# ruff: noqa: F811  (the settings fixture is overridden below and requested by name)
from __future__ import annotations

import concurrent.futures
import datetime as dt
import smtplib
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.db import transaction
from app.maildir import MailboxRef
from tests.browser.conftest import LiveServer, shot
from tests.factories import DEFAULT_PASSWORD, make_mailbox
from tests.protocol.outbound_helpers import Clock, make_agent, run_once

pytestmark = pytest.mark.browser

USER = "holiday@hosted.example"
SENDER = "friend@hosted.example"


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(update={"spool_root": tmp_path / "spool"})


def _send(live: LiveServer, subject: str) -> None:
    message = f"From: {SENDER}\r\nTo: {USER}\r\nSubject: {subject}\r\n\r\nAre you there?\r\n"
    with smtplib.SMTP("127.0.0.1", live.smtp_port, timeout=10) as client:
        client.sendmail(SENDER, [USER], message)


def _auto_replies(live: LiveServer) -> list[bytes]:
    store = live.store
    found = []
    for info in store.list_messages(MailboxRef("hosted.example", "friend")):
        with store.open_message(info) as f:
            data = f.read()
        if b"Auto-Submitted: auto-replied" in data:
            found.append(data)
    return found


def _deliver(live: LiveServer) -> None:
    """One round of the delivery agent, on a thread of its own (Playwright's sync API keeps
    an event loop on this one)."""
    later = Clock(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5))
    agent = make_agent(live.settings, live.session_factory, live.store, later)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(run_once, agent).result(timeout=60)


def test_user_sets_an_auto_reply_and_a_sender_gets_exactly_one(live: LiveServer, page: Any) -> None:
    with transaction(live.session_factory) as s:
        make_mailbox(s, USER)
        make_mailbox(s, SENDER)
    page.goto(f"{live.url}/me")
    page.wait_for_url(f"{live.url}/me/login")
    page.fill("#address", USER)
    page.fill("#password", DEFAULT_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live.url}/me")
    assert "0 B in 0 messages" in page.inner_text("#usage")
    today = dt.datetime.now(dt.UTC).date()
    page.fill("#ends_on", (today + dt.timedelta(days=14)).isoformat())
    page.fill("#subject", "On holiday")
    page.fill("#body", "I am on holiday and read mail when I am back.")
    page.click("button:has-text('Save auto-reply')")
    page.wait_for_selector("text=Auto-reply saved.")
    assert "On, from now to" in page.inner_text("#autoreply")
    shot(page, "30-me-auto-reply")

    _send(live, "first")
    _deliver(live)
    [reply] = _auto_replies(live)
    assert b"Subject: On holiday" in reply
    assert b"I am on holiday" in reply
    _send(live, "second")
    _deliver(live)
    assert len(_auto_replies(live)) == 1

    # Both messages are in the user's mailbox, and the page shows them.
    page.reload()
    assert "in 2 messages" in page.inner_text("#usage")
    # The user's session does not open the operator portal.
    page.goto(f"{live.url}/mailboxes")
    page.wait_for_url(f"{live.url}/login?next=/mailboxes")
