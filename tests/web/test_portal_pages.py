"""Portal pages and forms through HTTP with a real database: success and error paths."""
# ruff: noqa: F811  (pytest fixtures imported from portal_helpers are redefined as arguments)

from __future__ import annotations

import csv
import io
import re

from passlib.hash import sha512_crypt
from sqlalchemy import func, select

from app.db import transaction
from app.maildir import MailboxRef
from app.models import AuditEntry, Customer, Domain, Mailbox
from app.passwords import hash_password
from tests.factories import make_customer, make_domain, make_mailbox
from tests.fs_helpers import undeletable
from tests.web.portal_helpers import (  # noqa: F401  (fixtures)
    PortalClient,
    admin,
    field_error,
    input_value,
    portal_app,
    support,
)


def count(session_factory, model) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(model)) or 0


def test_every_list_page_renders(admin: PortalClient, session_factory) -> None:
    with transaction(session_factory) as session:
        make_mailbox(session, "bob@shop.example")
    for url in (
        "/",
        "/customers",
        "/domains",
        "/mailboxes",
        "/aliases",
        "/import",
        "/operators",
        "/tokens",
        "/audit",
        "/tokens/new",
        "/operators/new",
    ):
        response = admin.get(url)
        assert response.status_code == 200, url
        assert "<h1>" in response.text


def test_customer_create_edit_and_errors_keep_input(admin: PortalClient, session_factory) -> None:
    response = admin.post(
        "/customers/new", {"name": "Acme GmbH", "price_per_mailbox": "2.5", "currency": "eur"}
    )
    assert response.status_code == 303
    customer_url = response.headers["location"].split("?")[0]
    page = admin.get(customer_url)
    assert "Acme GmbH" in page.text and "2.5" in page.text and "EUR" in page.text

    # Duplicate name: error next to the name field, the typed price kept, nothing saved.
    response = admin.post(
        "/customers/new", {"name": "acme gmbh", "price_per_mailbox": "7", "currency": "EUR"}
    )
    assert response.status_code == 422
    assert "already exists" in field_error(response.text, "name")
    assert input_value(response.text, "price_per_mailbox") == "7"
    response = admin.post(
        "/customers/new", {"name": "Other", "price_per_mailbox": "abc", "currency": "EUR"}
    )
    assert response.status_code == 422 and field_error(response.text, "price_per_mailbox")
    response = admin.post(
        "/customers/new", {"name": "Other", "price_per_mailbox": "1", "currency": "EURO"}
    )
    assert response.status_code == 422 and field_error(response.text, "currency")
    assert count(session_factory, Customer) == 1

    response = admin.post(
        f"{customer_url}/edit", {"name": "Acme AG", "price_per_mailbox": "3", "currency": "CHF"}
    )
    assert response.status_code == 303
    assert "Acme AG" in admin.get(customer_url).text


def test_customer_search_and_status_filter_are_isolated(
    admin: PortalClient, session_factory
) -> None:
    with transaction(session_factory) as session:
        make_customer(session, "Blue Bakery")
        other = make_customer(session, "Red Garage")
        other.status = "suspended"
    page = admin.get("/customers?q=bakery")
    assert "Blue Bakery" in page.text and "Red Garage" not in page.text
    page = admin.get("/customers?status=suspended")
    assert "Red Garage" in page.text and "Blue Bakery" not in page.text


def test_customer_delete_refused_with_domains_unless_cascade(
    admin: PortalClient, session_factory, store
) -> None:
    with transaction(session_factory) as session:
        customer = make_customer(session, "Gone Ltd")
        make_domain(session, "gone.example", customer)
        make_mailbox(session, "a@gone.example")
        customer_id = customer.id
    store.deliver([(MailboxRef("gone.example", "a"), [b"Subject: hi\n\nbody\n"])])
    assert "Also delete" in admin.get(f"/customers/{customer_id}/delete").text
    response = admin.post(f"/customers/{customer_id}/delete")
    assert response.status_code == 409 and "domain" in response.text
    assert count(session_factory, Mailbox) == 1
    response = admin.post(f"/customers/{customer_id}/delete", {"cascade": "on"})
    assert response.status_code == 303
    assert count(session_factory, Customer) == 0 and count(session_factory, Domain) == 0
    assert store.usage(MailboxRef("gone.example", "a")).messages == 0


def test_domain_create_idn_dns_panel_and_errors(admin: PortalClient, session_factory) -> None:
    with transaction(session_factory) as session:
        make_customer(session, "Books Ltd")
    response = admin.post(
        "/domains/new", {"name": "Bücher.example", "customer": "books ltd", "max_mailboxes": "10"}
    )
    assert response.status_code == 303
    url = response.headers["location"].split("?")[0]
    page = admin.get(url).text
    assert "bücher.example" in page and "xn--bcher-kva.example" in page
    assert "10 mx.mailhost.example." in page  # the MX record points at settings.mx_hostname
    assert "v=spf1" in page
    assert "bücher.example" in admin.get("/domains?q=xn--bcher").text

    for data, field in (
        ({"name": "bücher.example", "customer": "Books Ltd"}, "name"),
        ({"name": "not a domain", "customer": "Books Ltd"}, "name"),
        ({"name": "new.example", "customer": "Nobody"}, "customer"),
        (
            {"name": "new.example", "customer": "Books Ltd", "default_quota_bytes": "lots"},
            "default_quota_bytes",
        ),
    ):
        response = admin.post("/domains/new", data)
        assert response.status_code == 422, data
        assert field_error(response.text, field), (data, response.text)
        assert input_value(response.text, "name") == data["name"]
    assert count(session_factory, Domain) == 1


def test_domain_limits_catchall_aliases_status(admin: PortalClient, session_factory) -> None:
    with transaction(session_factory) as session:
        domain = make_domain(session, "shop.example")
        make_mailbox(session, "a@shop.example")
        make_mailbox(session, "b@shop.example")
        domain_id = domain.id
    base = f"/domains/{domain_id}"
    response = admin.post(f"{base}/limits", {"max_mailboxes": "1", "default_quota_bytes": "1G"})
    assert response.status_code == 422 and field_error(response.text, "max_mailboxes")
    assert input_value(response.text, "max_mailboxes") == "1"
    assert (
        admin.post(
            f"{base}/limits", {"max_mailboxes": "5", "default_quota_bytes": "2G"}
        ).status_code
        == 303
    )
    response = admin.post(f"{base}/catchall", {"target": "nobody@shop.example"})
    assert response.status_code == 422 and field_error(response.text, "target")
    assert admin.post(f"{base}/catchall", {"target": "a@shop.example"}).status_code == 303
    assert admin.post(f"{base}/aliases", {"alias_name": "shop-alias.example"}).status_code == 303
    response = admin.post(f"{base}/aliases", {"alias_name": "shop.example"})
    assert response.status_code == 422 and field_error(response.text, "alias_name")
    assert admin.post(f"{base}/status", {"status": "suspended"}).status_code == 303
    page = admin.get(base).text
    assert "shop-alias.example" in page and "badge-suspended" in page and "of 5" in page
    assert (
        admin.post(f"{base}/aliases/remove", {"alias_name": "shop-alias.example"}).status_code
        == 303
    )
    assert (
        "shop-alias.example"
        not in admin.get(base).text.split("Alias domains")[1].split("</section>")[0]
    )


def test_mailbox_create_generated_password_shown_once(admin: PortalClient, session_factory) -> None:
    with transaction(session_factory) as session:
        make_domain(session, "shop.example")
    response = admin.post(
        "/mailboxes/new",
        {
            "address": "Carol@Shop.example",
            "password": "",
            "quota_bytes": "500M",
            "pop3_enabled": "on",
        },
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    password = re.search(r'<code id="generated-password">([^<]+)</code>', response.text).group(1)
    assert len(password) >= 12
    with session_factory() as session:
        mailbox = session.scalars(select(Mailbox)).one()
        assert mailbox.local_part == "carol" and mailbox.quota_bytes == 500 * 1024**2
        assert password not in mailbox.password_hash
    assert password not in admin.get(f"/mailboxes/{mailbox.id}").text


def test_mailbox_create_errors_keep_input_and_save_nothing(
    admin: PortalClient, session_factory
) -> None:
    with transaction(session_factory) as session:
        make_mailbox(session, "taken@shop.example")
    for data, field in (
        ({"address": "taken@shop.example", "password": "long enough pw"}, "address"),
        ({"address": "new@unknown.example", "password": "long enough pw"}, "address"),
        ({"address": "new@shop.example", "password": "short"}, "password"),
        (
            {"address": "new@shop.example", "password": "long enough pw", "quota_bytes": "-5"},
            "quota_bytes",
        ),
    ):
        response = admin.post("/mailboxes/new", data)
        assert response.status_code == 422, data
        assert field_error(response.text, field), (data, field)
        assert input_value(response.text, "address") == data["address"]
        assert "long enough pw" not in response.text  # passwords are never echoed
    assert count(session_factory, Mailbox) == 1


def test_mailbox_password_quota_pop3_status_delete(
    admin: PortalClient, session_factory, store
) -> None:
    with transaction(session_factory) as session:
        mailbox_id = make_mailbox(session, "dave@shop.example").id
    base = f"/mailboxes/{mailbox_id}"
    response = admin.post(
        f"{base}/password", {"password": "new secret 123", "password_confirm": "typo"}
    )
    assert response.status_code == 422 and field_error(response.text, "password")
    response = admin.post(
        f"{base}/password", {"password": "new secret 123", "password_confirm": "new secret 123"}
    )
    assert response.status_code == 303
    response = admin.post(f"{base}/settings", {"quota_bytes": "2G"})  # POP3 box unticked
    assert response.status_code == 303
    with session_factory() as session:
        mailbox = session.get(Mailbox, mailbox_id)
        assert mailbox.quota_bytes == 2 * 1024**3 and mailbox.pop3_enabled is False
    response = admin.post(f"{base}/settings", {"quota_bytes": "huge", "pop3_enabled": "on"})
    assert response.status_code == 422 and input_value(response.text, "quota_bytes") == "huge"

    store.deliver([(MailboxRef("shop.example", "dave"), [b"Subject: x\n\n" + b"a" * 1000 + b"\n"])])
    page = admin.get(base).text
    assert 'id="usage-messages">1<' in page and "of 2.0 GiB" in page
    assert "1 msg" in admin.get("/mailboxes").text
    assert "<strong>1</strong> stored message(s)" in admin.get(f"{base}/delete").text
    assert admin.post(f"{base}/delete").status_code == 303
    assert count(session_factory, Mailbox) == 0
    assert store.usage(MailboxRef("shop.example", "dave")).messages == 0


def test_delete_whose_message_files_cannot_be_removed_shows_a_warning(
    admin: PortalClient, session_factory, store
) -> None:
    with transaction(session_factory) as session:
        customer = make_customer(session, "Stuck Ltd")
        make_domain(session, "stuck.example", customer)
        mailbox_id = make_mailbox(session, "dave@stuck.example").id
        make_mailbox(session, "erin@stuck.example")
        customer_id = customer.id
    dave, erin = MailboxRef("stuck.example", "dave"), MailboxRef("stuck.example", "erin")
    store.deliver([(dave, [b"Subject: x\n\nx\n"]), (erin, [b"Subject: y\n\ny\n"])])
    with undeletable(store.mailbox_path(dave)):
        response = admin.post(f"/mailboxes/{mailbox_id}/delete")
        assert response.status_code == 303
        page = admin.get(response.headers["location"])
        assert page.status_code == 200
        assert 'class="alert alert-warn" role="alert"' in page.text
        assert "could not be removed" in page.text
        assert count(session_factory, Mailbox) == 1 and store.mailbox_path(dave).exists()
        # A customer deleted with cascade: the same warning, and every row is gone.
        with transaction(session_factory) as session:
            make_mailbox(session, "dave@stuck.example")
        response = admin.post(f"/customers/{customer_id}/delete", {"cascade": "on"})
        assert response.status_code == 303
        assert "could not be removed" in admin.get(response.headers["location"]).text
    assert count(session_factory, Customer) == 0 and count(session_factory, Mailbox) == 0
    assert not store.mailbox_path(erin).exists()


def test_mailbox_search_paging_and_domain_scope(admin: PortalClient, session_factory) -> None:
    with transaction(session_factory) as session:
        for i in range(60):
            make_mailbox(
                session,
                f"user{i:02d}@one.example",
                password_hash=hash_password("x" * 8) if i == 0 else None,
            )
        make_mailbox(session, "user99@two.example")
        two_id = session.scalar(select(Domain.id).where(Domain.name == "two.example"))
    first = admin.get("/mailboxes").text
    assert "user00@one.example" in first and "user49@one.example" in first
    assert "user50@one.example" not in first
    next_url = (
        re.search(r'href="(/mailboxes\?[^"]*after=\d+)"', first).group(1).replace("&amp;", "&")
    )
    second = admin.get(next_url).text
    assert "user50@one.example" in second and "user99@two.example" in second
    assert "user00@one.example" not in second
    scoped = admin.get(f"/mailboxes?domain={two_id}").text
    assert "user99@two.example" in scoped and "user00@one.example" not in scoped
    found = admin.get("/mailboxes?q=user5").text
    assert "user55@one.example" in found and "user00@one.example" not in found
    assert "No mailboxes match" in admin.get(f"/mailboxes?domain={two_id}&q=user5").text


def test_alias_create_edit_delete(admin: PortalClient, session_factory) -> None:
    with transaction(session_factory) as session:
        make_mailbox(session, "a@shop.example")
        make_mailbox(session, "b@shop.example")
    response = admin.post(
        "/aliases/new",
        {"address": "team@shop.example", "targets": "a@shop.example\nb@shop.example"},
    )
    assert response.status_code == 303
    url = response.headers["location"].split("?")[0]
    response = admin.post(
        "/aliases/new", {"address": "x@shop.example", "targets": "ghost@shop.example"}
    )
    assert response.status_code == 422 and field_error(response.text, "targets")
    assert input_value(response.text, "address") == "x@shop.example"
    response = admin.post(f"{url}/targets", {"targets": ""})
    assert response.status_code == 422 and field_error(response.text, "targets")
    assert admin.post(f"{url}/targets", {"targets": "b@shop.example"}).status_code == 303
    page = admin.get("/aliases?q=team").text
    assert "team@shop.example" in page and "a@shop.example" not in page
    assert admin.post(f"{url}/delete").status_code == 303
    assert admin.get(url).status_code == 404


def _csv(*rows: tuple[str, ...]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(("address", "password", "password_hash", "quota"))
    writer.writerows(rows)
    return out.getvalue().encode()


def test_import_preview_creates_nothing_and_bad_file_creates_nothing(
    admin: PortalClient, session_factory
) -> None:
    with transaction(session_factory) as session:
        make_domain(session, "shop.example")
        make_mailbox(session, "taken@shop.example")
    bad = _csv(
        ("new1@shop.example", "password one", "", "1G"),
        ("taken@shop.example", "password two", "", ""),
        ("new2@unknown.example", "password three", "", ""),
        ("new3@shop.example", "", "not-a-hash", ""),
        ("new1@shop.example", "password again", "", ""),
    )
    response = admin.post("/import/preview", files={"file": ("m.csv", bad, "text/csv")})
    assert response.status_code == 422
    assert "4 of 5 rows are wrong" in response.text
    assert "will be created" in response.text and "already exists" in response.text
    assert "/import/confirm" not in response.text
    assert count(session_factory, Mailbox) == 1

    good = _csv(
        ("new1@shop.example", "password one", "", "1G"),
        (
            "new2@shop.example",
            "",
            "{SHA512-CRYPT}" + sha512_crypt.hash("secret pw"),
            "",
        ),
    )
    response = admin.post("/import/preview", files={"file": ("m.csv", good, "text/csv")})
    assert response.status_code == 200, response.text
    assert "All 2 rows are valid" in response.text
    assert count(session_factory, Mailbox) == 1  # the preview created nothing
    csv_text = re.search(
        r'<textarea name="csv_text" hidden>(.*?)</textarea>', response.text, re.S
    ).group(1)
    import html

    response = admin.post("/import/confirm", {"csv_text": html.unescape(csv_text)})
    assert response.status_code == 303
    assert count(session_factory, Mailbox) == 3

    # Confirming a file that became invalid meanwhile creates nothing at all.
    response = admin.post(
        "/import/confirm", {"csv_text": good.decode() + "new9@shop.example,password nine,,\n"}
    )
    assert response.status_code == 422
    assert count(session_factory, Mailbox) == 3


def test_import_rejects_bad_header_and_export_roundtrips(
    admin: PortalClient, session_factory
) -> None:
    response = admin.post(
        "/import/preview", files={"file": ("m.csv", b"email,pw\nx,y\n", "text/csv")}
    )
    assert response.status_code == 422 and "first line must name the columns" in response.text
    with transaction(session_factory) as session:
        make_mailbox(session, "a@shop.example", quota=1024)
    export = admin.get("/export.csv")
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert rows[0]["address"] == "a@shop.example" and rows[0]["password"] == ""
    assert rows[0]["password_hash"].startswith("$argon2") and rows[0]["quota"] == "1024"


def test_support_cannot_import_or_export(support: PortalClient) -> None:
    assert support.get("/import").status_code == 403
    assert support.get("/export.csv").status_code == 403


def test_operators_and_tokens(admin: PortalClient, session_factory) -> None:
    response = admin.post(
        "/operators/new",
        {
            "username": "Bob",
            "password": "long password",
            "password_confirm": "long password",
            "role": "support",
        },
    )
    assert response.status_code == 303
    response = admin.post(
        "/operators/new",
        {
            "username": "bad name!",
            "password": "long password",
            "password_confirm": "long password",
            "role": "support",
        },
    )
    assert response.status_code == 422 and field_error(response.text, "username")
    assert "bob" in admin.get("/operators").text

    response = admin.post(
        "/tokens/new", {"name": "billing-sync", "scopes": ["read", "billing:read"]}
    )
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    secret = re.search(r'<code id="token-secret">([^<]+)</code>', response.text).group(1)
    assert secret.startswith("mh_")
    listing = admin.get("/tokens").text
    assert "billing-sync" in listing and secret not in listing
    response = admin.post("/tokens/new", {"name": "none"})
    assert response.status_code == 422 and "at least one scope" in response.text
    token_id = re.search(r'action="/tokens/(\d+)/revoke"', listing).group(1)
    assert admin.post(f"/tokens/{token_id}/revoke").status_code == 303
    assert "revoked" in admin.get("/tokens").text


def test_audit_log_records_operator_and_ip_and_filters(
    admin: PortalClient, session_factory
) -> None:
    admin.post("/customers/new", {"name": "Audit Ltd", "price_per_mailbox": "1", "currency": "EUR"})
    with transaction(session_factory) as session:
        make_customer(session, "Cli Ltd")
    with session_factory() as session:
        entry = session.scalars(
            select(AuditEntry).where(AuditEntry.object_name == "Audit Ltd")
        ).one()
        assert entry.actor == "alice" and entry.actor_type == "operator" and entry.remote_addr
    page = admin.get("/audit?actor=alice&object_type=customer").text
    assert "Audit Ltd" in page and "Cli Ltd" not in page
    page = admin.get("/audit?actor=cli").text
    assert "Cli Ltd" in page and "Audit Ltd" not in page
    dashboard = admin.get("/").text
    assert "Audit Ltd" in dashboard  # latest entries


def test_dashboard_counts_and_storage(admin: PortalClient, session_factory, store) -> None:
    with transaction(session_factory) as session:
        make_mailbox(session, "a@shop.example")
        suspended = make_mailbox(session, "b@shop.example")
        suspended.status = "suspended"
    store.deliver([(MailboxRef("shop.example", "a"), [b"x" * 100, b"\n"])] * 2)
    # The login already computed (and cached) the totals: they stay until refreshed or stale.
    assert 'id="messages-stored">0<' in admin.get("/").text
    assert admin.post("/dashboard/refresh-usage").status_code == 303
    page = admin.get("/").text
    assert "Storage figures as of" in page
    assert 'id="mailboxes-active">1<' in page and 'id="mailboxes-suspended">1<' in page
    assert 'id="messages-stored">2<' in page and 'id="bytes-stored">202 B<' in page
    store.deliver([(MailboxRef("shop.example", "a"), [b"y\n"])])
    assert admin.post("/dashboard/refresh-usage").status_code == 303
    assert 'id="messages-stored">3<' in admin.get("/").text


def test_export_neutralises_formula_cells_and_still_roundtrips(
    admin: PortalClient, session_factory
) -> None:
    with transaction(session_factory) as session:
        make_mailbox(session, "-2+3@shop.example")
    export = admin.get("/export.csv")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert [r["address"] for r in rows] == ["'-2+3@shop.example"]
    with transaction(session_factory) as session:
        session.execute(Mailbox.__table__.delete())
    preview = admin.post(
        "/import/preview", files={"file": ("m.csv", export.text.encode(), "text/csv")}
    )
    assert preview.status_code == 200, preview.text
    assert "<td>-2+3@shop.example</td>" in preview.text  # the escape is undone on import
