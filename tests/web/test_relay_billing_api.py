"""Relay-domain billing through the API: the customer's price per relay domain, and the
usage report and event feed fed by relay domains created and deleted for real."""

from __future__ import annotations

import csv
import io

from tests.web.api_helpers import Api, api_fixture, assert_problem  # noqa: F401
from tests.web.test_billing_api import set_time

V1 = "/api/v1"


def test_price_per_relay_domain_round_trip(api: Api) -> None:
    c = api.created(f"{V1}/customers", {"name": "Relay Co", "price_per_relay_domain": "12.5"})
    assert (c["price_per_relay_domain"], c["price_per_mailbox"]) == ("12.5000", "0.0000")
    other = api.created(f"{V1}/customers", {"name": "Plain Co"})
    assert other["price_per_relay_domain"] == "0.0000"
    r = api.patch(f"{V1}/customers/{c['id']}", {"price_per_relay_domain": "7.25"})
    assert r.status_code == 200, r.text
    assert r.json()["price_per_relay_domain"] == "7.2500"
    assert api.get(f"{V1}/customers/{c['id']}").json()["price_per_relay_domain"] == "7.2500"
    for bad in ("-1", "1.23456", "abc"):
        r = api.patch(f"{V1}/customers/{c['id']}", {"price_per_relay_domain": bad})
        assert_problem(r, 422, "price_per_relay_domain")
    assert api.get(f"{V1}/customers/{c['id']}").json()["price_per_relay_domain"] == "7.2500"


def test_usage_report_has_relay_line_items_from_real_events(api: Api) -> None:
    """A relay domain created and deleted through the API: its lifecycle events feed the
    usage report (JSON and CSV) and the event feed. Moved to chosen instants in June 2024
    (30 days): created 06-11 08:00, deleted 06-20 17:00 -> the 11th..20th = 10 days; a second
    one created 06-21 00:00 and kept -> 10 days. 12.00 per relay domain: 4.00 each."""
    c = api.created(f"{V1}/customers", {"name": "Relay Co", "price_per_relay_domain": "12"})
    body = {"customer_id": c["id"], "next_hop": "127.0.0.5:2525"}
    gone = api.created(f"{V1}/relay-domains", {**body, "name": "old.example"})
    api.created(f"{V1}/relay-domains", {**body, "name": "new.example"})
    assert api.delete(f"{V1}/relay-domains/{gone['domain_id']}").status_code == 204
    for name, action, when in [
        ("old.example", "created", "2024-06-11T08:00"),
        ("old.example", "deleted", "2024-06-20T17:00"),
        ("new.example", "created", "2024-06-21T00:00"),
    ]:
        set_time(api, "relay_domain", name, action, when)
    r = api.get(f"{V1}/billing/usage", token=api.billing, params={"period": "2024-06"})
    assert r.status_code == 200, r.text
    [mine] = [x for x in r.json()["customers"] if x["customer_id"] == c["id"]]
    assert mine["price_per_relay_domain"] == "12.0000"
    assert {
        (x["domain"], x["relay_domain_days"], x["amount"]) for x in mine["relay_line_items"]
    } == {
        ("old.example", 10, "4.00"),
        ("new.example", 10, "4.00"),
    }
    assert (mine["relay_domain_days"], mine["relay_domains_active_end"]) == (20, 1)
    assert mine["amount"] == "8.00" and mine["line_items"] == []

    rows = list(
        csv.DictReader(
            io.StringIO(
                api.get(
                    f"{V1}/billing/usage",
                    token=api.billing,
                    params={"period": "2024-06", "format": "csv", "customer_id": c["id"]},
                ).text
            )
        )
    )
    assert [(x["line"], x["domain"], x["relay_domain_days"], x["amount"]) for x in rows] == [
        ("relay_domain", "new.example", "10", "4.00"),
        ("relay_domain", "old.example", "10", "4.00"),
        ("total", "", "20", "8.00"),
    ]
    feed = api.get(f"{V1}/billing/events", token=api.billing, params={"customer_id": c["id"]})
    relay_events = [
        (e["domain"], e["action"]) for e in feed.json()["items"] if e["entity"] == "relay_domain"
    ]
    assert relay_events == [
        ("old.example", "created"),
        ("new.example", "created"),
        ("old.example", "deleted"),
    ]
