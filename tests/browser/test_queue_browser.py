"""The Queue page in headless Chromium: filter, open a message, hold, release, delete."""

# ruff: noqa: F811  (the settings fixture imported from queue_helpers is redefined as argument)
from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import LiveServer, login, shot
from tests.web.queue_helpers import defer_all, queue_message, settings, spool_of  # noqa: F401

pytestmark = pytest.mark.browser


def test_operator_finds_a_stuck_message_and_deals_with_it(live: LiveServer, page: Any) -> None:
    stuck, spool_id = queue_message(live.settings, live.session_factory, ["bob@slow.example"])
    defer_all(live.session_factory, code=451, text="4.7.1 greylisted, try again later")
    other, _ = queue_message(live.settings, live.session_factory, ["carol@fast.example"])

    login(page, live.url, "alice")
    page.click("nav >> text=Queue")
    page.wait_for_selector(f"text={other}")
    page.fill("input[name=domain]", "slow.example")
    page.click("button:has-text('Filter')")
    page.wait_for_selector(f"text={stuck}")
    assert page.locator(f"text={other}").count() == 0
    shot(page, "20-queue-filtered")

    page.click(f"text={stuck}")
    assert "451 4.7.1 greylisted, try again later" in page.inner_text("#recipients")
    page.click("button:has-text('Hold')")
    page.wait_for_selector("text=Held: no delivery until released.")
    assert "held" in page.inner_text("#recipients")
    page.click("button:has-text('Release')")
    page.wait_for_selector("text=Released")
    shot(page, "21-queue-message")

    page.click("text=Delete…")
    page.click("button:has-text('Delete message')")
    page.wait_for_selector("text=Deleted.")
    assert page.locator(f"text={stuck}").count() == 0
    assert not spool_of(live.settings).exists(spool_id)
