"""The customer's price per relay domain through the API (create, read, change, refuse)."""

from __future__ import annotations

from tests.web.api_helpers import Api, api_fixture, assert_problem  # noqa: F401

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
