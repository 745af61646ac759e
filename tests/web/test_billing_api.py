"""Billing through the API: a hand-computed month-boundary scenario, CSV, the event feed
(also under concurrent writers over real HTTP) and billing history surviving deletion."""

from __future__ import annotations

import csv
import datetime as dt
import io
import threading
from typing import Any

import httpx
from sqlalchemy import update

from app.db import transaction
from app.maildir import MailboxRef
from app.models import LifecycleEvent
from app.passwords import hash_password
from tests.web.api_helpers import (
    Api,
    ServerThread,
    api_fixture,  # noqa: F401
    assert_problem,
    bearer,
    build_app,
)

V1 = "/api/v1"


def set_time(api: Api, entity: str, name: str, action: str, when: str) -> None:
    """Move a lifecycle event to a chosen instant (the services stamp 'now'). Mailboxes are
    named by address, domains by name: ids alone may be reused on SQLite."""
    at = dt.datetime.fromisoformat(when).replace(tzinfo=dt.UTC)
    column = LifecycleEvent.address if entity == "mailbox" else LifecycleEvent.domain_name
    with transaction(api.factory) as s:
        query = update(LifecycleEvent).where(
            LifecycleEvent.entity == entity, column == name, LifecycleEvent.action == action
        )
        result = s.execute(query.values(occurred_at=at))
        assert result.rowcount == 1, (entity, name, action)  # type: ignore[attr-defined]


def build_scenario(api: Api) -> dict[str, Any]:
    """Customer "Shop" (3.10 per mailbox per period), domain shop.example, in 2024:

      a@  created 04-20 10:00                                          (the 20th of April)
      b@  created 04-01 00:00, suspended 04-11 12:00, resumed 05-05 08:00
      c@  created 04-25 09:00, deleted 05-02 07:00 (through the API: its row is gone)
    and, to prove the customer filter, customer "Other" with x@other.example created 04-30.
    """
    shop = api.created(f"{V1}/customers", {"name": "Shop", "price_per_mailbox": "3.10"})
    api.created(f"{V1}/domains", {"customer_id": shop["id"], "name": "shop.example"})
    stored_hash = hash_password("long enough password")
    ids = {}
    for local in ("a", "b", "c"):
        body = {"address": f"{local}@shop.example", "password_hash": stored_hash}
        ids[local] = api.created(f"{V1}/mailboxes", body)["id"]
    assert api.post(f"{V1}/mailboxes/{ids['b']}/suspend").status_code == 200
    assert api.post(f"{V1}/mailboxes/{ids['b']}/resume").status_code == 200
    assert api.delete(f"{V1}/mailboxes/{ids['c']}").status_code == 204
    other = api.created(f"{V1}/customers", {"name": "Other", "price_per_mailbox": "9.99"})
    api.created(f"{V1}/domains", {"customer_id": other["id"], "name": "other.example"})
    api.created(f"{V1}/mailboxes", {"address": "x@other.example", "password_hash": stored_hash})

    set_time(api, "domain", "shop.example", "created", "2024-04-01T00:00")
    set_time(api, "mailbox", "a@shop.example", "created", "2024-04-20T10:00")
    set_time(api, "mailbox", "b@shop.example", "created", "2024-04-01T00:00")
    set_time(api, "mailbox", "b@shop.example", "suspended", "2024-04-11T12:00")
    set_time(api, "mailbox", "b@shop.example", "resumed", "2024-05-05T08:00")
    set_time(api, "mailbox", "c@shop.example", "created", "2024-04-25T09:00")
    set_time(api, "mailbox", "c@shop.example", "deleted", "2024-05-02T07:00")
    # On SQLite x may even get c's old id; billing must still tell them apart.
    set_time(api, "mailbox", "x@other.example", "created", "2024-04-30T08:00")
    return {"shop": shop["id"], "other": other["id"], "ids": ids}


def test_usage_across_a_month_boundary_matches_the_hand_computation(api: Api) -> None:
    sc = build_scenario(api)
    r = api.get(f"{V1}/billing/usage", token=api.billing, params={"period": "2024-04"})
    assert r.status_code == 200, r.text
    april = r.json()
    assert (april["from"], april["to"], april["days"]) == ("2024-04-01", "2024-05-01", 30)
    shop = next(c for c in april["customers"] if c["customer_id"] == sc["shop"])
    # April (30 days):
    #   a: days 20..30                     = 11 billable
    #   b: days 1..11 (suspended at noon on the 11th, so the 11th is billed) = 11 billable,
    #      days 12..30 suspended all day   = 19 suspended days
    #   c: days 25..30                     =  6 billable
    #   mailbox-days 11 + 11 + 6 = 28; amount 3.10 * 28 / 30 = 2.8933.. -> "2.89"
    #   daily counts: 1-11: 1 (b), 12-19: 0, 20-24: 1 (a), 25-30: 2 (a, c) -> peak 2
    #   at the end of April: a and c active, b suspended
    assert shop["mailbox_days"] == 28
    assert shop["suspended_days"] == 19
    assert shop["amount"] == "2.89"
    assert shop["price_per_mailbox"] == "3.1000" and shop["currency"] == "EUR"
    assert shop["peak_mailboxes"] == 2
    assert (shop["mailboxes_active_end"], shop["mailboxes_suspended_end"]) == (2, 1)
    [line] = shop["line_items"]
    assert (line["domain"], line["mailbox_days"], line["amount"]) == ("shop.example", 28, "2.89")

    r = api.get(f"{V1}/billing/usage", token=api.billing, params={"period": "2024-05"})
    shop = next(c for c in r.json()["customers"] if c["customer_id"] == sc["shop"])
    # May (31 days):
    #   a: all 31; b: suspended 1..4 (4 suspended days), resumed the 5th at 08:00 -> 5..31 = 27;
    #   c: 1..2 (deleted the 2nd at 07:00, so the 2nd is billed) = 2
    #   mailbox-days 31 + 27 + 2 = 60; amount 3.10 * 60 / 31 = 6.00 exactly
    #   daily counts: 1-2: 2 (a, c), 3-4: 1 (a), 5-31: 2 (a, b) -> peak 2
    #   at the end of May: a and b active; c deleted (not counted, but billed above)
    assert (shop["mailbox_days"], shop["suspended_days"], shop["amount"]) == (60, 4, "6.00")
    assert shop["peak_mailboxes"] == 2
    assert (shop["mailboxes_active_end"], shop["mailboxes_suspended_end"]) == (2, 0)

    # The same period given as from/to (to exclusive) is the same report.
    r2 = api.get(
        f"{V1}/billing/usage",
        token=api.billing,
        params={"from": "2024-05-01", "to": "2024-06-01", "customer_id": sc["shop"]},
    )
    [only] = r2.json()["customers"]
    assert only == shop

    # Both months together (61 days) bill 28 + 60 = 88 days: nothing double counted at the
    # boundary. 3.10 * 88 / 61 = 4.4721.. -> "4.47"
    r3 = api.get(
        f"{V1}/billing/usage",
        token=api.billing,
        params={"from": "2024-04-01", "to": "2024-06-01", "customer_id": sc["shop"]},
    )
    [both] = r3.json()["customers"]
    assert (both["mailbox_days"], both["suspended_days"], both["amount"]) == (88, 23, "4.47")

    # The other customer: x created 04-30 -> 1 day in April: 9.99 * 1 / 30 = 0.333 -> "0.33".
    other = next(c for c in april["customers"] if c["customer_id"] == sc["other"])
    assert (other["mailbox_days"], other["amount"]) == (1, "0.33")


def test_usage_reports_current_storage_per_domain(api: Api) -> None:
    build_scenario(api)
    api.store.deliver([(MailboxRef("shop.example", "a"), [b"Subject: x\n\n" + b"y" * 100])])
    r = api.get(f"{V1}/billing/usage", token=api.billing, params={"period": "2024-04"})
    shop = next(c for c in r.json()["customers"] if c["customer_name"] == "Shop")
    assert shop["storage_bytes"] == len(b"Subject: x\n\n") + 100
    assert shop["storage_messages"] == 1
    assert shop["line_items"][0]["storage_bytes"] == shop["storage_bytes"]


def test_usage_as_csv(api: Api) -> None:
    sc = build_scenario(api)
    for extra in ({"headers": {"Accept": "text/csv"}}, {"params": {"format": "csv"}}):
        params = {"period": "2024-04", **extra.get("params", {})}
        r = api.get(f"{V1}/billing/usage", token=api.billing, params=params, **{
            k: v for k, v in extra.items() if k == "headers"
        })  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(r.text)))
        shop_rows = [row for row in rows if row["customer_id"] == str(sc["shop"])]
        assert [row["line"] for row in shop_rows] == ["domain", "total"]
        total = shop_rows[-1]
        assert (total["mailbox_days"], total["suspended_days"], total["amount"]) == (
            "28",
            "19",
            "2.89",
        )
        assert shop_rows[0]["domain"] == "shop.example"


def test_usage_input_problems(api: Api) -> None:
    url = f"{V1}/billing/usage"
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({}, 422, "from"),
        ({"period": "2024-13"}, 422, "period"),
        ({"period": "april"}, 422, "period"),
        ({"period": "2024-04", "from": "2024-04-01"}, 422, "period"),
        ({"from": "2024-04-01"}, 422, "to"),
        ({"from": "2024-04-10", "to": "2024-04-01"}, 422, "to"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, 422, "to"),
        ({"from": "yesterday", "to": "2024-04-01"}, 422, "from"),
        ({"period": "2024-04", "customer_id": 999}, 404, "customer_id"),
        ({"period": "2024-04", "format": "xml"}, 422, "format"),
    ]
    for params, status, field in cases:
        assert_problem(api.get(url, token=api.billing, params=params), status, field)
    r = api.get(
        url, token=api.billing, params={"period": "2024-04"}, headers={"Accept": "image/png"}
    )
    assert_problem(r, 406, "Accept")
    r = api.get(url, token=api.billing, params={"period": "2024-04"}, headers={"Accept": "*/*"})
    assert r.headers["content-type"].startswith("application/json")


def test_event_feed_syncs_incrementally_and_keeps_deleted_history(api: Api) -> None:
    sc = build_scenario(api)
    url = f"{V1}/billing/events"
    collected: list[dict[str, Any]] = []
    cursor = 0
    while True:
        page = api.get(url, token=api.billing, params={"after": cursor, "limit": 3}).json()
        collected.extend(page["items"])
        if not page["items"]:
            assert page["next_cursor"] == cursor  # an empty page keeps the client's position
            break
        cursor = page["next_cursor"]
    ids = [e["id"] for e in collected]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    c_events = [(e["action"], e["address"]) for e in collected
                if e["address"] == "c@shop.example"]  # fmt: skip
    assert c_events == [("created", "c@shop.example"), ("deleted", "c@shop.example")]
    # New changes appear after the cursor, and only they.
    api.post(f"{V1}/mailboxes/{sc['ids']['a']}/suspend")
    page = api.get(url, token=api.billing, params={"after": cursor}).json()
    assert [(e["action"], e["address"]) for e in page["items"]] == [("suspended", "a@shop.example")]
    # Filter by customer.
    only = api.get(url, token=api.billing, params={"customer_id": sc["other"]}).json()["items"]
    assert {e["customer_id"] for e in only} == {sc["other"]} and len(only) == 2
    assert_problem(api.get(url, token=api.billing, params={"after": -1}), 422, "after")
    assert_problem(api.get(url, token=api.billing, params={"limit": 1001}), 422, "limit")


def test_concurrent_api_writers_never_make_the_feed_skip_or_repeat(
    api: Api, settings: Any, session_factory: Any, store: Any
) -> None:
    """Three HTTP clients create, suspend and resume mailboxes at once while a fourth syncs
    the feed over HTTP; afterwards the syncing client holds every event once, in id order."""
    c = api.created(f"{V1}/customers", {"name": "Busy"})
    api.created(f"{V1}/domains", {"customer_id": c["id"], "name": "busy.example"})
    stored_hash = hash_password("long enough password")
    done = threading.Event()
    errors: list[str] = []
    seen: list[int] = []

    with ServerThread(build_app(settings, session_factory, store)) as server:

        def writer(n: int) -> None:
            with httpx.Client(base_url=server.url, timeout=30, headers=bearer(api.admin)) as http:
                for i in range(6):
                    r = http.post(
                        f"{V1}/mailboxes",
                        json={"address": f"w{n}-{i}@busy.example", "password_hash": stored_hash},
                    )
                    if r.status_code != 201:
                        errors.append(r.text)
                        return
                    mid = r.json()["id"]
                    for action in ("suspend", "resume"):
                        r = http.post(f"{V1}/mailboxes/{mid}/{action}")
                        if r.status_code != 200:
                            errors.append(r.text)

        def reader() -> None:
            cursor = 0
            with httpx.Client(base_url=server.url, timeout=30, headers=bearer(api.billing)) as http:
                while True:
                    finished = done.is_set()
                    page = http.get(f"{V1}/billing/events", params={"after": cursor, "limit": 5})
                    if page.status_code != 200:
                        errors.append(page.text)
                        return
                    body = page.json()
                    seen.extend(e["id"] for e in body["items"])
                    cursor = body["next_cursor"]
                    if finished and not body["items"]:
                        return

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
        sync = threading.Thread(target=reader)
        sync.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        done.set()
        sync.join(timeout=120)

    assert not errors, errors[:3]
    with transaction(api.factory) as s:
        all_ids = [e.id for e in s.query(LifecycleEvent).order_by(LifecycleEvent.id)]
    assert len(all_ids) == 1 + 3 * 6 * 3  # the domain, then 18 mailboxes x 3 events
    assert seen == all_ids


def test_usage_csv_neutralises_formula_customer_names(api: Api) -> None:
    evil = '=HYPERLINK("http://evil.example","click")'
    api.created(f"{V1}/customers", {"name": evil})
    r = api.get(
        f"{V1}/billing/usage", token=api.billing, params={"period": "2024-04", "format": "csv"}
    )
    assert r.status_code == 200, r.text
    names = [row["customer_name"] for row in csv.DictReader(io.StringIO(r.text))]
    assert "'" + evil in names
    assert evil not in names
