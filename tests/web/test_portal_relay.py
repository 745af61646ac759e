"""The relay domain pages: create, settings (errors next to their field), the warning for
mode 'any', recipients with CSV import and export, the queue with flush / hold / release, the
DNS panel (primary and backup MX), delete with queued mail, the dashboard's relay queues and
what a support operator may not do."""
# ruff: noqa: F811  (pytest fixtures imported from portal_helpers are redefined as arguments)

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.models import RCPT_DEFERRED, RCPT_HELD, RCPT_QUEUED, OutboundRecipient, RelayDomain
from app.services import queue, relay, relay_recipients
from app.services.audit import CLI_ACTOR
from tests.factories import make_customer, make_domain
from tests.web.portal_helpers import (  # noqa: F401  (fixtures)
    PortalClient,
    admin,
    field_error,
    input_value,
    portal_app,
    support,
)

HOP = "mail.shop.example:2525"


@pytest.fixture
def shop(session_factory: sessionmaker[Session]) -> int:
    with transaction(session_factory) as s:
        customer = make_customer(s, "Shop")
        domain = relay.create_relay_domain(
            s, actor=CLI_ACTOR, customer_id=customer.id, name="shop.example", next_hop=HOP
        )
        return domain.id


def _enqueue(factory: sessionmaker[Session], *recipients: str, spool_id: str) -> None:
    with transaction(factory) as s:
        queue.enqueue(
            s,
            spool_id=spool_id,
            size=10,
            sender="a@sender.example",
            recipients=list(recipients),
            origin="relay",
            now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=2),
        )


def _relay_row(factory: sessionmaker[Session], domain_id: int) -> dict[str, Any]:
    with transaction(factory) as s:
        r = s.get(RelayDomain, domain_id)
        assert r is not None
        return {
            "next_hop": r.next_hop,
            "recipient_mode": r.recipient_mode,
            "max_queue_age": r.max_queue_age,
            "held": r.held,
            "flush_networks": r.flush_networks,
        }


def test_create_a_relay_domain_from_the_form(
    admin: PortalClient, session_factory: sessionmaker[Session]
) -> None:
    with transaction(session_factory) as s:
        make_customer(s, "Shop")
    form = admin.get("/relay/new")
    assert form.status_code == 200 and 'name="next_hop"' in form.text
    bad = admin.post(
        "/relay/new",
        {
            "name": "shop.example",
            "customer": "Shop",
            "next_hop": "mx.test.example",
            "max_queue_days": "10",
        },
    )
    assert bad.status_code == 422
    assert "mail loop" in (field_error(bad.text, "next_hop") or "")
    assert input_value(bad.text, "name") == "shop.example"  # what was typed stays
    days = admin.post(
        "/relay/new",
        {"name": "shop.example", "customer": "Shop", "next_hop": HOP, "max_queue_days": "0"},
    )
    assert days.status_code == 422 and field_error(days.text, "max_queue_days")
    ok = admin.post(
        "/relay/new",
        {
            "name": "Shop.Example",
            "customer": "Shop",
            "next_hop": HOP,
            "recipient_mode": "list",
            "tls_policy": "required",
            "max_queue_days": "5",
            "callout_cache_seconds": "60",
            "flush_networks": "198.51.100.7/32",
        },
    )
    assert ok.status_code == 303, ok.text
    domain_id = int(ok.headers["location"].split("/")[2].split("?")[0])
    row = _relay_row(session_factory, domain_id)
    assert row == {
        "next_hop": HOP,
        "recipient_mode": "list",
        "max_queue_age": 5 * 86400,
        "held": False,
        "flush_networks": "198.51.100.7/32",
    }
    # The domain's own page leads to the relay page; the list shows it.
    moved = admin.get(f"/domains/{domain_id}", follow_redirects=False)
    assert moved.headers["location"] == f"/relay/{domain_id}"
    listing = admin.get("/relay")
    assert "shop.example" in listing.text and HOP in listing.text


def test_settings_form_and_the_warning_for_mode_any(
    admin: PortalClient, session_factory: sessionmaker[Session], shop: int
) -> None:
    page = admin.get(f"/relay/{shop}")
    assert page.status_code == 200
    assert input_value(page.text, "next_hop") == HOP
    assert input_value(page.text, "max_queue_days") == "10"
    assert 'id="mode-any-warning"' not in page.text
    base = {"next_hop": HOP, "tls_policy": "opportunistic", "max_queue_days": "10"}
    bad = admin.post(f"/relay/{shop}/settings", {**base, "flush_networks": "300.0.0.1/8"})
    assert bad.status_code == 422 and field_error(bad.text, "flush_networks")
    assert _relay_row(session_factory, shop)["flush_networks"] == ""
    saved = admin.post(
        f"/relay/{shop}/settings",
        {
            **base,
            "recipient_mode": "any",
            "callout_cache_seconds": "0",
            "flush_networks": "192.0.2.0/24",
        },
    )
    assert saved.status_code == 303
    assert _relay_row(session_factory, shop)["recipient_mode"] == "any"
    warned = admin.get(f"/relay/{shop}")
    assert 'id="mode-any-warning"' in warned.text and "backscatter" in warned.text


def test_recipients_add_remove_import_export(
    admin: PortalClient, session_factory: sessionmaker[Session], shop: int
) -> None:
    assert admin.post(f"/relay/{shop}/recipients", {"address": "Anna"}).status_code == 303
    dup = admin.post(f"/relay/{shop}/recipients", {"address": "anna@shop.example"})
    assert dup.status_code == 422 and "already listed" in (field_error(dup.text, "address") or "")
    csv_bad = b"address\nbert\nnot valid here\n"
    r = admin.post(
        f"/relay/{shop}/recipients/import", files={"file": ("r.csv", csv_bad, "text/csv")}
    )
    assert r.status_code == 422 and "line 3" in (field_error(r.text, "file") or "")
    csv_good = b"address\nbert@shop.example\ncarl\n"
    r = admin.post(
        f"/relay/{shop}/recipients/import", files={"file": ("r.csv", csv_good, "text/csv")}
    )
    assert r.status_code == 303, r.text
    page = admin.get(f"/relay/{shop}")
    assert "Recipients (3)" in page.text
    export = admin.get(f"/relay/{shop}/recipients.csv")
    assert export.headers["content-type"].startswith("text/csv")
    assert list(csv.reader(io.StringIO(export.text))) == [
        ["address"],
        ["anna@shop.example"],
        ["bert@shop.example"],
        ["carl@shop.example"],
    ]
    r = admin.post(
        f"/relay/{shop}/recipients/import",
        {"replace": "on"},
        files={"file": ("r.csv", b"carl\n", "text/csv")},
    )
    assert r.status_code == 303
    assert admin.post(f"/relay/{shop}/recipients/remove", {"address": "carl"}).status_code == 303
    with transaction(session_factory) as s:
        assert relay_recipients.count_recipients(s, domain_id=shop) == 0
    empty = admin.post(
        f"/relay/{shop}/recipients/import", files={"file": ("r.csv", b"", "text/csv")}
    )
    assert empty.status_code == 422 and field_error(empty.text, "file")


def test_queue_card_flush_hold_release_and_dashboard(
    admin: PortalClient, session_factory: sessionmaker[Session], shop: int
) -> None:
    _enqueue(session_factory, "a@shop.example", "z@elsewhere.example", spool_id="01" + "0" * 18)
    with transaction(session_factory) as s:
        s.execute(
            OutboundRecipient.__table__.update()
            .where(OutboundRecipient.address == "a@shop.example")
            .values(
                state=RCPT_DEFERRED,
                last_attempt_at=dt.datetime.now(dt.UTC),
                last_reply_code=421,
                last_reply_text="4.4.1 connection refused",
            )
        )
    page = admin.get(f"/relay/{shop}")
    assert '<dd id="queue-count">1 recipient(s)</dd>' in page.text
    assert "421 4.4.1 connection refused" in page.text
    dash = admin.get("/")
    assert 'id="relay-queues"' in dash.text and f'href="/relay/{shop}"' in dash.text
    assert "421 4.4.1 connection refused" in dash.text
    assert admin.post(f"/relay/{shop}/flush").status_code == 303
    assert admin.post(f"/relay/{shop}/hold", {"reason": "moving house"}).status_code == 303
    held = admin.get(f"/relay/{shop}")
    assert "moving house" in held.text and "Release" in held.text
    with transaction(session_factory) as s:
        states = dict(s.execute(select(OutboundRecipient.address, OutboundRecipient.state)).all())
    assert states == {"a@shop.example": RCPT_HELD, "z@elsewhere.example": RCPT_QUEUED}
    # Flush of a held domain is a clear refusal, nothing changes.
    refused = admin.post(f"/relay/{shop}/flush")
    assert refused.status_code == 409 and "release it first" in refused.text
    assert admin.post(f"/relay/{shop}/release").status_code == 303
    assert not _relay_row(session_factory, shop)["held"]

    # Delete: refused while mail is queued, then with discard.
    refused = admin.post(f"/relay/{shop}/delete")
    assert refused.status_code == 409 and "queued" in refused.text
    assert admin.post(f"/relay/{shop}/delete", {"discard": "on"}).status_code == 303
    assert admin.get(f"/relay/{shop}").status_code == 404


def test_dns_panel_primary_and_backup_mx(
    admin: PortalClient, session_factory: sessionmaker[Session], shop: int
) -> None:
    page = admin.get(f"/relay/{shop}")
    mx = admin.http.app.state.settings.mx_hostname.rstrip(".")  # type: ignore[attr-defined]
    assert f"shop.example. IN MX 10 {mx}.\n" in page.text.split('id="dns-primary">')[1]
    backup = page.text.split('id="dns-backup">')[1].split("</pre>")[0]
    # The customer's own server (from the next hop) preferred; ours with a higher number.
    assert backup == f"shop.example. IN MX 10 mail.shop.example.\nshop.example. IN MX 20 {mx}.\n"
    # A next hop given as an address: the customer fills in its server's name.
    with transaction(session_factory) as s:
        relay.update_relay(s, actor=CLI_ACTOR, domain_id=shop, next_hop="192.0.2.7:25")
    page = admin.get(f"/relay/{shop}")
    assert "IN MX 10 your-mail-server.example." in page.text
    assert "Put the host name of the customer" in page.text


def test_support_sees_but_cannot_change(
    support: PortalClient, session_factory: sessionmaker[Session], shop: int
) -> None:
    page = support.get(f"/relay/{shop}")
    assert page.status_code == 200 and "Flush now" not in page.text
    for url, data in [
        (f"/relay/{shop}/flush", {}),
        (f"/relay/{shop}/hold", {}),
        (f"/relay/{shop}/settings", {"next_hop": "evil.example"}),
        (f"/relay/{shop}/recipients", {"address": "x"}),
        (f"/relay/{shop}/delete", {"discard": "on"}),
    ]:
        assert support.post(url, data).status_code == 403, url
    assert _relay_row(session_factory, shop)["next_hop"] == HOP
    assert support.get("/relay/new").status_code == 403


def test_a_hosted_domain_is_no_relay_page(
    admin: PortalClient, session_factory: sessionmaker[Session]
) -> None:
    with transaction(session_factory) as s:
        hosted = make_domain(s, "hosted.example").id
    assert admin.get(f"/relay/{hosted}").status_code == 404
    assert admin.get(f"/domains/{hosted}").status_code == 200
