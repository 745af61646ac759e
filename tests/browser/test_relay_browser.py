"""The relay domain pages in headless Chromium: create one, see the warning for mode 'any',
add a recipient, hold and release its queue, read the DNS panel."""

from __future__ import annotations

from typing import Any

import pytest

from app.db import transaction
from tests.browser.conftest import LiveServer, login, shot
from tests.factories import make_customer

pytestmark = pytest.mark.browser


def test_operator_sets_up_a_relay_domain(live: LiveServer, page: Any) -> None:
    with transaction(live.session_factory) as s:
        make_customer(s, "Shop")
    login(page, live.url, "alice")
    page.click("nav >> text=Relay domains")
    page.click("text=New relay domain")
    page.fill("input[name=name]", "shop.example")
    page.fill("input[name=customer]", "Shop")
    page.fill("input[name=next_hop]", "mail.shop.example:2525")
    page.select_option("select[name=recipient_mode]", "any")
    page.click("button:has-text('Create relay domain')")
    page.wait_for_selector("text=Created.")
    assert "backscatter" in page.inner_text("#mode-any-warning")
    page.fill("#recipient-add input[name=address]", "anna")
    page.click("#recipient-add button:has-text('Add')")
    page.wait_for_selector("#recipient-list >> text=anna@shop.example")
    page.fill("input[name=reason]", "server moves")
    page.click("button:has-text('Hold')")
    page.wait_for_selector("text=Held: no delivery until released.")
    assert "server moves" in page.inner_text("#held-note")
    assert "IN MX 20" in page.inner_text("#dns-backup")
    shot(page, "30-relay-domain")
    page.click("button:has-text('Release')")
    page.wait_for_selector("text=Released")
    assert page.locator("#held-note").count() == 0
