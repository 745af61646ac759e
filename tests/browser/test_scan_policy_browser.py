"""A customer's scan policy in headless Chromium: the operator goes from the customer page to
its scan policy, sets it, sees its domains take it as their defaults (a domain's own value
still wins), and a bad threshold is a form error that saves nothing."""

from __future__ import annotations

from typing import Any

import pytest

from app.db import transaction
from app.services import scan_policy
from app.services.audit import CLI_ACTOR
from app.services.scan_policy import PolicyChange
from tests.browser.conftest import LiveServer, login, shot
from tests.factories import make_customer, make_domain

pytestmark = pytest.mark.browser


def test_operator_sets_a_customers_scan_policy(live: LiveServer, page: Any) -> None:
    with transaction(live.session_factory) as s:
        customer = make_customer(s, "Acme Scan")
        plain = make_domain(s, "plain.example", customer=customer)
        own = make_domain(s, "own.example", customer=customer)
        scan_policy.set_override(
            s,
            actor=CLI_ACTOR,
            scope="domain",
            scope_id=own.id,
            change=PolicyChange(reject_score=30.0),
        )
        customer_id, plain_id = customer.id, plain.id
    login(page, live.url, "alice")
    page.goto(f"{live.url}/customers/{customer_id}")
    page.click("#customer-scanning-link")
    page.wait_for_selector("h1:has-text('Scanning: Acme Scan')")
    assert "(inherited)" in page.inner_text("#eff-reject")
    page.fill("#policy-form input[name=reject_score]", "12")
    page.fill("#policy-form input[name=tag_score]", "4.5")
    page.fill("#policy-form input[name=subject_tag]", "[ACME-SPAM]")
    page.select_option("#policy-form select[name=greylisting]", "on")
    page.click("#policy-form button:has-text('Save')")
    page.wait_for_selector("text=Saved.")
    assert page.inner_text("#eff-reject") == "12.0"
    assert page.inner_text("#eff-grey") == "on"
    plain_row = page.inner_text("tr[data-domain='plain.example']")
    assert "12.0" in plain_row and "4.5" in plain_row and "[ACME-SPAM]" in plain_row
    assert "nothing (all from the customer)" in plain_row
    own_row = page.inner_text("tr[data-domain='own.example']")
    assert "30.0" in own_row and "reject_score" in own_row  # the domain's own value wins
    shot(page, "40-customer-scan-policy")
    # The domain's own page shows the customer's values as what it inherits.
    page.goto(f"{live.url}/domains/{plain_id}/scanning")
    assert page.inner_text("#eff-reject") == "12.0 (inherited)"
    # A tag threshold at or above the reject threshold: a form error, nothing saved.
    page.goto(f"{live.url}/customers/{customer_id}/scanning")
    page.fill("#policy-form input[name=tag_score]", "20")
    page.click("#policy-form button:has-text('Save')")
    page.wait_for_selector("#e-tag_score")
    assert "tag_score must be below reject_score" in page.inner_text("#e-tag_score")
    page.fill("#policy-form input[name=reject_score]", "lots")
    page.click("#policy-form button:has-text('Save')")
    page.wait_for_selector("#e-reject_score")
    assert "enter a number" in page.inner_text("#e-reject_score")
    with transaction(live.session_factory) as s:
        kept = scan_policy.own_override(s, scope="customer", scope_id=customer_id)
    assert kept == {
        "reject_score": 12.0,
        "tag_score": 4.5,
        "subject_tag": "[ACME-SPAM]",
        "greylisting": True,
    }
