"""Message tracking in headless Chromium: a support operator follows the link from a
mailbox's page and sees each message's events with the replies; searching an address that
was refused shows the refusal."""

from __future__ import annotations

from typing import Any

import pytest

from tests import tracking_scenario as scenario
from tests.browser.conftest import LiveServer, login, shot
from tests.protocol.pop3_helpers import running_server

pytestmark = pytest.mark.browser


def test_support_operator_tracks_mail_from_the_mailbox_page(live: LiveServer, page: Any) -> None:
    scenario.seed(live.session_factory)
    with running_server(
        live.settings, session_factory=live.session_factory, store=live.store
    ) as pop3:
        outcome = scenario.run(live.session_factory, smtp_port=live.smtp_port, pop3_port=pop3.port)
    base = live.url
    login(page, base, "sam")  # role 'support'
    page.click("nav >> text=Mailboxes")
    page.click(f"text={scenario.ALICE}")
    page.click("#tracking-link")
    page.wait_for_selector("#events")
    shot(page, "tracking-01-mailbox")
    kinds = page.locator("#events td.kind").all_inner_texts()
    assert kinds == ["received", "received", "stored", "stored", "retrieved", "deleted"]
    assert page.input_value("input[name=address]") == scenario.ALICE
    replies = page.locator("#events td.reply").all_inner_texts()
    assert f"250 2.0.0 Ok: delivered as {outcome.queue_id}" in replies
    # One click on the queue id: the same message by its id.
    page.locator(f"#events a:has-text('{outcome.queue_id}')").first.click()
    page.wait_for_selector("#events")
    assert page.input_value("input[name=queue_id]") == outcome.queue_id
    assert page.locator("#events td.kind").count() == 6

    # The refused recipient, searched with the form in another case.
    page.click("text=Clear")
    page.fill("input[name=address]", scenario.NOBODY.upper())
    page.click("button:has-text('Search')")
    page.wait_for_selector("#events")
    assert page.locator("#events td.kind").all_inner_texts() == ["refused"]
    reply = page.locator("#events td.reply").inner_text()
    assert reply.startswith("550 5.1.1"), reply
    shot(page, "tracking-02-refused")

    # Nothing to change here: the only form on the page is the search (GET).
    assert page.locator("form[method=post]").count() == 1  # the logout form in the header
    assert page.locator("form[method=get]").count() == 1
