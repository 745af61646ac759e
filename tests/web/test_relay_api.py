"""Relay domains through the API: settings, recipients with CSV import and export, the queue
summary, flush / hold / release, delete with queued mail, scopes and problem documents."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import pytest
from sqlalchemy import select

from app.db import transaction
from app.models import RCPT_DEFERRED, RCPT_HELD, RCPT_QUEUED, OutboundRecipient
from app.services import queue
from tests.web.api_helpers import Api, api_fixture, assert_problem, make_token  # noqa: F401

V1 = "/api/v1"
HOP = "127.0.0.5:2525"


@pytest.fixture
def relay_domain(api: Api) -> dict[str, Any]:
    customer = api.created(f"{V1}/customers", {"name": "Shop", "price_per_relay_domain": "9"})
    return api.created(
        f"{V1}/relay-domains",
        {"customer_id": customer["id"], "name": "Shop.Example", "next_hop": HOP},
    )


@pytest.fixture
def queue_token(api: Api) -> str:
    return make_token(api.factory, "queue")


def _enqueue(api: Api, *recipients: str, spool_id: str, at: dt.datetime) -> None:
    with transaction(api.factory) as s:
        queue.enqueue(
            s,
            spool_id=spool_id,
            size=10,
            sender="a@sender.example",
            recipients=list(recipients),
            origin="relay",
            now=at,
        )


def _states(api: Api) -> dict[str, str]:
    with transaction(api.factory) as s:
        return dict(s.execute(select(OutboundRecipient.address, OutboundRecipient.state)).all())


def test_create_read_update_list(api: Api, relay_domain: dict[str, Any]) -> None:
    d = relay_domain
    assert (d["name"], d["next_hop"], d["recipient_mode"], d["tls_policy"]) == (
        "shop.example",
        HOP,
        "list",
        "opportunistic",
    )
    assert (d["max_queue_age"], d["held"], d["flush_networks"]) == (864000, False, [])
    url = f"{V1}/relay-domains/{d['domain_id']}"
    assert api.get(url, token=api.read).json() == d
    r = api.patch(
        url,
        {"recipient_mode": "verify", "flush_networks": ["192.0.2.0/24"], "tls_policy": "required"},
    )
    assert r.status_code == 200, r.text
    assert (r.json()["recipient_mode"], r.json()["flush_networks"]) == ("verify", ["192.0.2.0/24"])
    assert r.json()["tls_policy"] == "required"
    # It is a domain too (kind relay), and listed among relay domains.
    assert api.get(f"{V1}/domains/{d['domain_id']}").status_code == 200
    page = api.get(f"{V1}/relay-domains").json()
    assert [x["name"] for x in page["items"]] == ["shop.example"]


BAD_SETTINGS: list[tuple[dict[str, Any], str]] = [
    ({"next_hop": "mx.test.example"}, "next_hop"),  # our own name: a mail loop
    ({"next_hop": "not a host!"}, "next_hop"),
    ({"recipient_mode": "some"}, "recipient_mode"),
    ({"tls_policy": "never"}, "tls_policy"),
    ({"max_queue_age": 0}, "max_queue_age"),
    ({"flush_networks": ["300.1.2.3/8"]}, "flush_networks"),
    ({"callout_cache_seconds": -1}, "callout_cache_seconds"),
    ({"color": "red"}, "color"),
]


def test_bad_settings_are_problems_and_change_nothing(
    api: Api, relay_domain: dict[str, Any]
) -> None:
    url = f"{V1}/relay-domains/{relay_domain['domain_id']}"
    for body, field in BAD_SETTINGS:
        assert_problem(api.patch(url, body), 422, field)
    assert api.get(url).json() == relay_domain


def test_create_refusals(api: Api, relay_domain: dict[str, Any]) -> None:
    cid = relay_domain["customer_id"]
    taken = api.post(
        f"{V1}/relay-domains", {"customer_id": cid, "name": "shop.example", "next_hop": HOP}
    )
    assert_problem(taken, 409, "name")
    loop = api.post(
        f"{V1}/relay-domains",
        {"customer_id": cid, "name": "b.example", "next_hop": "mx.test.example"},
    )
    assert_problem(loop, 422, "next_hop")
    assert "loop" in loop.json()["detail"]
    assert_problem(
        api.post(f"{V1}/relay-domains", {"customer_id": 999, "name": "c.example", "next_hop": HOP}),
        404,
    )
    # A hosted domain is not a relay domain.
    hosted = api.created(f"{V1}/domains", {"customer_id": cid, "name": "hosted.example"})
    assert_problem(api.get(f"{V1}/relay-domains/{hosted['id']}"), 404, "domain_id")
    # Writes need the provisioning scope.
    assert_problem(
        api.patch(f"{V1}/relay-domains/{relay_domain['domain_id']}", {}, token=api.read), 403
    )


def test_recipients_add_list_remove_and_csv(api: Api, relay_domain: dict[str, Any]) -> None:
    base = f"{V1}/relay-domains/{relay_domain['domain_id']}/recipients"
    r = api.post(base, {"address": "Anna@Shop.Example"})
    assert r.status_code == 201, r.text
    assert r.json()["address"] == "anna@shop.example"
    assert_problem(api.post(base, {"address": "anna"}), 409, "address")
    assert_problem(api.post(base, {"address": "x@other.example"}), 422, "address")
    # Import: all or nothing; bad lines named.
    bad = api.post(
        f"{base}/import",
        content=b"address\nbert\nnot an address\n",
        headers={"Content-Type": "text/csv"},
    )
    assert_problem(bad, 422)
    assert "line 3" in bad.text
    good = api.post(
        f"{base}/import",
        content=b"address\nbert@shop.example\nanna\n# a comment\n\ncarl\n",
        headers={"Content-Type": "text/csv"},
    )
    assert good.status_code == 200, good.text
    assert good.json() == {"added": 2, "already_listed": 1, "removed": 0}
    page = api.get(base, token=api.read, params={"limit": 2}).json()
    assert [x["address"] for x in page["items"]] == ["anna@shop.example", "bert@shop.example"]
    rest = api.get(base, params={"cursor": page["next_cursor"]}).json()
    assert [x["address"] for x in rest["items"]] == ["carl@shop.example"]
    export = api.get(f"{base}.csv", token=api.read)
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    assert list(csv.reader(io.StringIO(export.text))) == [
        ["address"],
        ["anna@shop.example"],
        ["bert@shop.example"],
        ["carl@shop.example"],
    ]
    # The export imports back with replace: nothing changes; a shorter file removes.
    same = api.post(f"{base}/import", content=export.content, params={"replace": "true"})
    assert same.json() == {"added": 0, "already_listed": 3, "removed": 0}
    fewer = api.post(f"{base}/import", content=b"anna\n", params={"replace": "true"})
    assert fewer.json() == {"added": 0, "already_listed": 1, "removed": 2}
    assert api.delete(f"{base}/anna@shop.example").status_code == 204
    assert_problem(api.delete(f"{base}/anna"), 404, "address")
    assert api.get(base).json()["items"] == []
    assert_problem(
        api.post(f"{base}/import", content=b"\xff\xfe", headers={"Content-Type": "text/csv"}),
        422,
        "body",
    )


def test_queue_summary_flush_hold_release(
    api: Api, relay_domain: dict[str, Any], queue_token: str
) -> None:
    base = f"{V1}/relay-domains/{relay_domain['domain_id']}"
    now = dt.datetime.now(dt.UTC)
    _enqueue(
        api,
        "a@shop.example",
        "z@elsewhere.example",
        spool_id="01" + "0" * 18,
        at=now - dt.timedelta(hours=3),
    )
    _enqueue(api, "b@shop.example", spool_id="02" + "0" * 18, at=now)
    with transaction(api.factory) as s:
        s.execute(
            OutboundRecipient.__table__.update()
            .where(OutboundRecipient.address == "b@shop.example")
            .values(
                state=RCPT_DEFERRED,
                next_attempt_at=now + dt.timedelta(hours=1),
                last_attempt_at=now,
                last_reply_code=421,
                last_reply_text="4.4.1 connection refused",
            )
        )
    # The queue needs the queue scope, reads too.
    assert_problem(api.get(f"{base}/queue"), 403)
    q = api.get(f"{base}/queue", token=queue_token).json()
    assert (q["count"], q["held"], q["last_error"]) == (2, 0, "421 4.4.1 connection refused")
    assert dt.datetime.fromisoformat(q["oldest"]) == now - dt.timedelta(hours=3)
    r = api.post(f"{base}/flush", token=queue_token)
    assert r.status_code == 200, r.text
    assert r.json() == {"domain_id": relay_domain["domain_id"], "recipients": 1, "held": False}
    r = api.post(f"{base}/hold", {"reason": "server moves"}, token=queue_token)
    assert r.json()["recipients"] == 2 and r.json()["held"] is True
    assert api.get(base).json()["hold_reason"] == "server moves"
    assert _states(api) == {
        "a@shop.example": RCPT_HELD,
        "b@shop.example": RCPT_HELD,
        "z@elsewhere.example": RCPT_QUEUED,
    }
    assert_problem(api.post(f"{base}/flush", token=queue_token), 409)
    assert api.get(f"{base}/queue", token=queue_token).json()["held"] == 2
    r = api.post(f"{base}/release", token=queue_token)
    assert (r.json()["recipients"], r.json()["held"]) == (2, False)
    assert set(_states(api).values()) == {RCPT_QUEUED}
    assert_problem(
        api.post(f"{base}/hold", {"reason": "x" * 501}, token=queue_token), 422, "reason"
    )

    # Delete: refused while mail is queued, then with discard=true.
    assert_problem(api.delete(base), 409, "discard")
    assert api.delete(base, params={"discard": "true"}).status_code == 204
    assert _states(api) == {"z@elsewhere.example": RCPT_QUEUED}
    assert_problem(api.get(base), 404)


def test_recipient_import_takes_a_file_over_the_small_body_limit(
    api: Api, relay_domain: dict[str, Any]
) -> None:
    """Other API bodies stop at MAILHOST_WEB_MAX_BODY_BYTES (512 KiB); the CSV import has the
    upload limit (16 MiB). 600 KiB of comment lines and one address."""
    base = f"{V1}/relay-domains/{relay_domain['domain_id']}/recipients"
    big = b"# " + b"x" * 998 + b"\n"
    body = big * 600 + b"anna\n"
    r = api.post(f"{base}/import", content=body, headers={"Content-Type": "text/csv"})
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 1
    # The same size elsewhere is still refused before it is read.
    too_big = api.post(base, content=body, headers={"Content-Type": "application/json"})
    assert too_big.status_code == 413
