"""Provisioning contract: CRUD, suspend/resume, pages, filters, tenant isolation, idempotent
retries and problem documents, through the HTTP interface with a real database."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
from sqlalchemy import func, select

from app.db import transaction
from app.maildir import MailboxRef
from app.models import Customer, LifecycleEvent, Mailbox
from app.passwords import hash_password
from app.services import mailboxes
from app.services.audit import CLI_ACTOR
from tests.fs_helpers import undeletable
from tests.web.api_helpers import (
    Api,
    ServerThread,
    api_fixture,  # noqa: F401
    assert_problem,
    bearer,
    build_app,
)

V1 = "/api/v1"


def seed(api: Api, customer: str = "Acme", domain: str = "acme.example") -> dict[str, Any]:
    c = api.created(f"{V1}/customers", {"name": customer, "price_per_mailbox": "3.50"})
    d = api.created(f"{V1}/domains", {"customer_id": c["id"], "name": domain})
    m = api.created(f"{V1}/mailboxes", {"address": f"bob@{domain}", "password": "hunter2hunter2"})
    return {"customer": c, "domain": d, "mailbox": m}


# ------------------------------------------------------------------------------ lifecycle
def test_customer_domain_mailbox_alias_lifecycle(api: Api) -> None:
    objs = seed(api)
    c, d, m = objs["customer"], objs["domain"], objs["mailbox"]
    assert c["price_per_mailbox"] == "3.5000" and c["status"] == "active"
    assert d["customer_id"] == c["id"] and d["name"] == "acme.example"
    assert m["address"] == "bob@acme.example" and m["customer_id"] == c["id"]
    assert m["quota_bytes"] == d["default_quota_bytes"]

    # Reads round-trip what was created.
    assert api.get(f"{V1}/customers/{c['id']}").json() == c
    assert api.get(f"{V1}/domains/{d['id']}").json()["name"] == "acme.example"

    # Update.
    r = api.patch(f"{V1}/customers/{c['id']}", {"price_per_mailbox": "4.25", "name": "Acme Ltd"})
    assert r.status_code == 200 and r.json()["price_per_mailbox"] == "4.2500", r.text
    r = api.patch(f"{V1}/domains/{d['id']}", {"max_mailboxes": 10, "total_quota_bytes": 10**10})
    assert (r.json()["max_mailboxes"], r.json()["total_quota_bytes"]) == (10, 10**10)
    r = api.patch(f"{V1}/domains/{d['id']}", {"max_mailboxes": None})  # explicit null clears
    assert r.json()["max_mailboxes"] is None and r.json()["total_quota_bytes"] == 10**10
    r = api.patch(f"{V1}/mailboxes/{m['id']}", {"quota_bytes": 5_000_000, "pop3_enabled": False})
    assert (r.json()["quota_bytes"], r.json()["pop3_enabled"]) == (5_000_000, False)
    r = api.patch(f"{V1}/mailboxes/{m['id']}", {"password": "an0ther-secret"})
    assert r.status_code == 200, r.text

    # Suspend / resume each level; the mailbox and domain ones become lifecycle events.
    for kind, oid in (("customers", c["id"]), ("domains", d["id"]), ("mailboxes", m["id"])):
        r = api.post(f"{V1}/{kind}/{oid}/suspend")
        assert r.status_code == 200 and r.json()["status"] == "suspended", r.text
        assert api.get(f"{V1}/{kind}/{oid}").json()["status"] == "suspended"
        r = api.post(f"{V1}/{kind}/{oid}/resume")
        assert r.json()["status"] == "active"

    # Alias domains and aliases.
    r = api.post(f"{V1}/domains/{d['id']}/aliases", {"name": "acme-alias.example"})
    assert r.status_code == 201, r.text
    alias_domain = r.json()
    assert api.get(f"{V1}/domains/{d['id']}").json()["alias_domains"] == ["acme-alias.example"]
    assert [a["name"] for a in api.get(f"{V1}/domains/{d['id']}/aliases").json()] == [
        "acme-alias.example"
    ]
    a = api.created(f"{V1}/aliases", {"address": "info@acme.example", "targets": [m["address"]]})
    assert a["targets"] == ["bob@acme.example"]
    api.created(f"{V1}/mailboxes", {"address": "eve@acme.example", "password": "hunter2hunter2"})
    r = api.patch(f"{V1}/aliases/{a['id']}", {"targets": ["eve@acme.example", "bob@acme.example"]})
    assert r.json()["targets"] == ["bob@acme.example", "eve@acme.example"]
    r = api.patch(f"{V1}/domains/{d['id']}", {"catchall_target": "info@acme.example"})
    assert r.json()["catchall_target"] == "info@acme.example", r.text

    # Deletes: refused while things hang below, then fine.
    assert_problem(api.delete(f"{V1}/customers/{c['id']}"), 409, "customer_id")
    assert_problem(api.delete(f"{V1}/domains/{d['id']}"), 409, "domain_id")
    assert api.delete(f"{V1}/domains/{d['id']}/aliases/{alias_domain['id']}").status_code == 204
    assert api.delete(f"{V1}/aliases/{a['id']}").status_code == 204
    assert_problem(api.get(f"{V1}/aliases/{a['id']}"), 404)
    assert api.delete(f"{V1}/mailboxes/{m['id']}").status_code == 204
    assert_problem(api.get(f"{V1}/mailboxes/{m['id']}"), 404)
    assert api.delete(f"{V1}/customers/{c['id']}?cascade=true").status_code == 204
    assert_problem(api.get(f"{V1}/customers/{c['id']}"), 404)
    assert_problem(api.get(f"{V1}/domains/{d['id']}"), 404)

    # Billing history survives every deletion.
    with transaction(api.factory) as s:
        events = s.scalars(select(LifecycleEvent).order_by(LifecycleEvent.id)).all()
        summary = [(e.entity, e.action, e.address) for e in events]
    assert ("mailbox", "created", "bob@acme.example") in summary
    assert ("mailbox", "suspended", "bob@acme.example") in summary
    assert ("mailbox", "deleted", "bob@acme.example") in summary
    assert ("mailbox", "deleted", "eve@acme.example") in summary  # by the cascade
    assert ("domain", "deleted", None) in summary


def test_mailbox_reads_include_usage_quota_and_last_login(api: Api) -> None:
    m = seed(api)["mailbox"]
    assert m["usage"] == {"bytes": 0, "messages": 0} and m["last_login_at"] is None
    message = b"Subject: hi\n\nhello there\n"
    ref = MailboxRef("acme.example", "bob")
    api.store.deliver([(ref, [message]), (ref, [message])])  # two messages
    got = api.get(f"{V1}/mailboxes/{m['id']}").json()
    assert got["usage"] == {"bytes": 2 * len(message), "messages": 2}
    listed = api.get(f"{V1}/mailboxes").json()["items"]
    assert listed[0]["usage"]["messages"] == 2
    with transaction(api.factory) as s:
        from app.services import accounts

        assert accounts.authenticate_mailbox(
            s, address="bob@acme.example", password="hunter2hunter2"
        )
    got = api.get(f"{V1}/mailboxes/{m['id']}").json()
    assert got["last_login_at"] is not None and got["quota_bytes"] > 0


def test_deleting_a_mailbox_removes_its_messages(api: Api) -> None:
    m = seed(api)["mailbox"]
    ref = MailboxRef("acme.example", "bob")
    api.store.deliver([(ref, [b"Subject: x\n\nx\n"])])
    assert api.store.mailbox_path(ref).exists()
    assert api.delete(f"{V1}/mailboxes/{m['id']}").status_code == 204
    assert not api.store.mailbox_path(ref).exists()


def test_deleting_when_message_files_cannot_be_removed_answers_with_a_warning(api: Api) -> None:
    objs = seed(api)
    api.created(f"{V1}/mailboxes", {"address": "eve@acme.example", "password": "hunter2hunter2"})
    bob, eve = MailboxRef("acme.example", "bob"), MailboxRef("acme.example", "eve")
    api.store.deliver([(bob, [b"Subject: x\n\nx\n"]), (eve, [b"Subject: y\n\ny\n"])])
    with undeletable(api.store.mailbox_path(bob)):
        response = api.delete(f"{V1}/mailboxes/{objs['mailbox']['id']}")
        # The deletion happened: a success status, the row is gone, the warning says why
        # files are left (without server paths).
        assert response.status_code == 200, response.text
        [warning] = response.json()["warnings"]
        assert "bob@acme.example" in warning and "could not be removed" in warning
        assert str(api.store.root) not in warning
        assert_problem(api.get(f"{V1}/mailboxes/{objs['mailbox']['id']}"), 404)
        assert api.store.mailbox_path(bob).exists()
        # A cascade over the domain: the same answer for the one Maildir that stays.
        api.created(f"{V1}/mailboxes", {"address": "bob@acme.example", "password": "x" * 12})
        api.store.deliver([(bob, [b"Subject: z\n\nz\n"])])
        response = api.delete(f"{V1}/domains/{objs['domain']['id']}", params={"cascade": "true"})
        assert response.status_code == 200, response.text
        assert [w.split()[1] for w in response.json()["warnings"]] == ["bob@acme.example"]
    assert not api.store.mailbox_path(eve).exists()
    assert_problem(api.get(f"{V1}/domains/{objs['domain']['id']}"), 404)


# ------------------------------------------------------------------------------ pages
def test_pagination_through_120_mailboxes(api: Api) -> None:
    d = seed(api)["domain"]
    stored_hash = hash_password("long enough password")  # hash once, not 120 times
    with transaction(api.factory) as s:
        for i in range(119):
            mailboxes.create_mailbox(
                s, actor=CLI_ACTOR, address=f"user{i:03d}@acme.example", password_hash=stored_hash
            )
    seen: list[int] = []
    sizes = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 50, "domain_id": d["id"]}
        if cursor:
            params["cursor"] = cursor
        page = api.get(f"{V1}/mailboxes", params=params).json()
        sizes.append(len(page["items"]))
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sizes == [50, 50, 20]
    assert seen == sorted(seen) and len(set(seen)) == 120
    # Filters apply on every page: only suspended ones.
    api.post(f"{V1}/mailboxes/{seen[7]}/suspend")
    api.post(f"{V1}/mailboxes/{seen[99]}/suspend")
    page = api.get(f"{V1}/mailboxes", params={"status": "suspended", "limit": 1}).json()
    assert [i["id"] for i in page["items"]] == [seen[7]]
    page2 = api.get(
        f"{V1}/mailboxes", params={"status": "suspended", "limit": 1, "cursor": page["next_cursor"]}
    ).json()
    assert [i["id"] for i in page2["items"]] == [seen[99]]
    search = api.get(f"{V1}/mailboxes", params={"search": "user11"}).json()["items"]
    assert sorted(i["address"] for i in search) == [f"user11{i}@acme.example" for i in range(9)]


def test_customer_and_domain_lists_page_too(api: Api) -> None:
    for i in range(5):
        api.created(f"{V1}/customers", {"name": f"Customer {i}"})
    page = api.get(f"{V1}/customers", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = api.get(f"{V1}/customers", params={"limit": 10, "cursor": page["next_cursor"]}).json()
    assert len(rest["items"]) == 3 and rest["next_cursor"] is None
    api.post(f"{V1}/customers/{rest['items'][0]['id']}/suspend")
    suspended = api.get(f"{V1}/customers", params={"status": "suspended"}).json()["items"]
    assert [c["id"] for c in suspended] == [rest["items"][0]["id"]]


# ------------------------------------------------------------------------------ tenant isolation
def test_tenant_filters_cannot_be_escaped(api: Api) -> None:
    a = seed(api, "Alpha", "alpha.example")
    b = seed(api, "Bravo", "bravo.example")
    api.created(f"{V1}/aliases", {"address": "x@bravo.example", "targets": ["bob@bravo.example"]})
    ca, cb = a["customer"]["id"], b["customer"]["id"]
    da, db = a["domain"]["id"], b["domain"]["id"]
    mb = b["mailbox"]["id"]

    def addresses(url: str, **params: Any) -> list[str]:
        response = api.get(url, params=params)
        assert response.status_code == 200, response.text
        return [i.get("address") or i.get("name") for i in response.json()["items"]]

    assert addresses(f"{V1}/mailboxes", customer_id=ca) == ["bob@alpha.example"]
    # Another customer's domain as a second filter narrows to nothing, never widens.
    assert addresses(f"{V1}/mailboxes", customer_id=ca, domain_id=db) == []
    assert addresses(f"{V1}/mailboxes", customer_id=ca, search="bravo") == []
    assert addresses(f"{V1}/aliases", customer_id=ca) == []
    assert addresses(f"{V1}/domains", customer_id=ca) == ["alpha.example"]
    # Customer-scoped paths.
    assert addresses(f"{V1}/customers/{ca}/mailboxes") == ["bob@alpha.example"]
    assert addresses(f"{V1}/customers/{ca}/mailboxes", domain_id=db) == []
    assert addresses(f"{V1}/customers/{ca}/domains") == ["alpha.example"]
    assert addresses(f"{V1}/customers/{ca}/aliases") == []
    assert addresses(f"{V1}/customers/{cb}/aliases") == ["x@bravo.example"]
    # A cursor taken from another customer's listing does not carry that customer along.
    page = api.get(f"{V1}/mailboxes", params={"limit": 1}).json()
    assert addresses(f"{V1}/customers/{cb}/mailboxes", cursor=page["next_cursor"]) == [
        "bob@bravo.example"
    ]
    assert addresses(f"{V1}/customers/{ca}/mailboxes", cursor=page["next_cursor"]) == []
    # Another customer's objects under this customer's path: 404, like a missing id.
    assert_problem(api.get(f"{V1}/customers/{ca}/mailboxes/{mb}"), 404, "mailbox_id")
    assert_problem(api.get(f"{V1}/customers/{ca}/domains/{db}"), 404, "domain_id")
    assert api.get(f"{V1}/customers/{cb}/mailboxes/{mb}").json()["address"] == "bob@bravo.example"
    assert api.get(f"{V1}/customers/{ca}/domains/{da}").status_code == 200
    # Unknown customer: 404, not an empty list that looks like "no mailboxes".
    assert_problem(api.get(f"{V1}/customers/999/mailboxes"), 404, "customer_id")
    # Alias domains: another domain's alias cannot be deleted through this domain's path.
    r = api.post(f"{V1}/domains/{db}/aliases", {"name": "bravo-alias.example"})
    assert_problem(api.delete(f"{V1}/domains/{da}/aliases/{r.json()['id']}"), 404, "alias_id")
    assert api.get(f"{V1}/domains/{db}").json()["alias_domains"] == ["bravo-alias.example"]


# ------------------------------------------------------------------------------ idempotency
def test_idempotent_retry_creates_once_and_replays_the_response(api: Api) -> None:
    body = {"name": "Retry Ltd", "price_per_mailbox": "1.00"}
    key = {"Idempotency-Key": "signup-42"}
    first = api.post(f"{V1}/customers", body, headers=key)
    again = api.post(f"{V1}/customers", body, headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    with transaction(api.factory) as s:
        assert s.scalar(select(func.count(Customer.id))) == 1
    # Same key, different body: refused, names the header, creates nothing.
    other = api.post(f"{V1}/customers", {"name": "Other Ltd"}, headers=key)
    assert_problem(other, 422, "Idempotency-Key")
    # Keys are per token: another token's identical key is a different request.
    api.post(f"{V1}/customers", {"name": "Other Ltd"}, token=api.provisioning, headers=key)
    with transaction(api.factory) as s:
        assert s.scalar(select(func.count(Customer.id))) == 2
    # Without a key, a retry is a second request (here: a conflict).
    assert_problem(api.post(f"{V1}/customers", body), 409, "name")


def test_failed_requests_are_not_stored_under_their_key(api: Api) -> None:
    key = {"Idempotency-Key": "mb-1"}
    body = {"address": "ann@later.example", "password": "hunter2hunter2"}
    assert api.post(f"{V1}/mailboxes", body, headers=key).status_code in (404, 422)
    c = api.created(f"{V1}/customers", {"name": "Later"})
    api.created(f"{V1}/domains", {"customer_id": c["id"], "name": "later.example"})
    # The retry after the domain exists succeeds (the failure was not replayed).
    assert api.post(f"{V1}/mailboxes", body, headers=key).status_code == 201


def test_concurrent_retries_with_one_key_create_once(
    api: Api, settings: Any, session_factory: Any, store: Any
) -> None:
    c = api.created(f"{V1}/customers", {"name": "Race"})
    api.created(f"{V1}/domains", {"customer_id": c["id"], "name": "race.example"})
    stored_hash = hash_password("long enough password")
    body = {"address": "dup@race.example", "password_hash": stored_hash}
    results: list[httpx.Response] = []
    with ServerThread(build_app(settings, session_factory, store)) as server:
        barrier = threading.Barrier(4)

        def send() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                barrier.wait()
                results.append(
                    client.post(
                        f"{V1}/mailboxes",
                        json=body,
                        headers={**bearer(api.provisioning), "Idempotency-Key": "same"},
                    )
                )

        threads = [threading.Thread(target=send) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert [r.status_code for r in results] == [201] * 4, [r.text for r in results]
    assert len({json.dumps(r.json(), sort_keys=True) for r in results}) == 1
    with transaction(api.factory) as s:
        assert s.scalar(select(func.count(Mailbox.id))) == 1


# ------------------------------------------------------------------------------ problems
BAD_INPUT = [
    # (method, path, body, status, field)
    ("POST", "/customers", {"name": ""}, 422, "name"),
    ("POST", "/customers", {"name": "X", "currency": "eur"}, 422, "currency"),
    ("POST", "/customers", {"name": "X", "price_per_mailbox": "-1"}, 422, "price_per_mailbox"),
    ("POST", "/customers", {"name": "X", "price_per_mailbox": "1.23456"}, 422, "price_per_mailbox"),
    ("POST", "/customers", {"name": "X", "colour": "red"}, 422, "colour"),
    ("POST", "/customers", {"name": "Acme"}, 409, "name"),
    ("POST", "/customers", None, 422, "body"),
    ("POST", "/domains", {"customer_id": "{cid}", "name": "not a domain"}, 422, "name"),
    ("POST", "/domains", {"customer_id": "{cid}", "name": "acme.example"}, 409, "name"),
    ("POST", "/domains", {"customer_id": 999, "name": "new.example"}, 404, "customer_id"),
    ("POST", "/domains", {"name": "new.example"}, 422, "customer_id"),
    ("POST", "/mailboxes", {"address": "no-at-sign", "password": "hunter2hunter2"}, 422, "address"),
    ("POST", "/mailboxes", {"address": "a@acme.example", "password": "short"}, 422, "password"),
    ("POST", "/mailboxes", {"address": "a@acme.example"}, 422, "password"),
    ("POST", "/mailboxes", {"address": "bob@acme.example", "password": "hunter2hunter2"}, 409,
     "address"),
    ("POST", "/mailboxes", {"address": "a@acme.example", "password": "hunter2hunter2",
                            "quota_bytes": -1}, 422, "quota_bytes"),
    ("POST", "/aliases", {"address": "x@acme.example", "targets": []}, 422, "targets"),
    ("POST", "/aliases", {"address": "x@acme.example", "targets": ["nobody@acme.example"]}, 422,
     "targets"),
    ("POST", "/aliases", {"address": "bob@acme.example", "targets": ["bob@acme.example"]}, 409,
     "address"),
    ("PATCH", "/mailboxes/{mid}", {"quota_bytes": -5}, 422, "quota_bytes"),
    ("PATCH", "/mailboxes/{mid}", {"password": "short"}, 422, "password"),
    ("PATCH", "/domains/{did}", {"catchall_target": "nobody@elsewhere.example"}, 422,
     "catchall_target"),
    ("PATCH", "/domains/{did}", {"max_mailboxes": 0}, 409, "max_mailboxes"),
    ("POST", "/domains/{did}/aliases", {"name": "acme.example"}, 409, "name"),
    ("POST", "/domains/{did}/aliases", {"name": "-bad-.example"}, 422, "name"),
    ("GET", "/mailboxes?limit=0", None, 422, "limit"),
    ("GET", "/mailboxes?limit=201", None, 422, "limit"),
    ("GET", "/mailboxes?cursor=garbage!", None, 422, "cursor"),
    ("GET", "/mailboxes?status=frozen", None, 422, "status"),
    ("GET", "/mailboxes?customer_id=abc", None, 422, "customer_id"),
    ("GET", "/mailboxes/0", None, 422, "mailbox_id"),
    ("GET", "/mailboxes/999", None, 404, "mailbox_id"),
    ("GET", "/domains/999", None, 404, "domain_id"),
    ("GET", "/customers/999", None, 404, "customer_id"),
    ("DELETE", "/aliases/999", None, 404, "alias_id"),
    ("POST", "/mailboxes/999/suspend", None, 404, "mailbox_id"),
]  # fmt: skip


def test_bad_input_gets_a_problem_naming_the_field(api: Api) -> None:
    """One table, one runner (every row refused, nothing created, so they share one setup)."""
    objs = seed(api)
    ids = {
        "cid": objs["customer"]["id"],
        "did": objs["domain"]["id"],
        "mid": objs["mailbox"]["id"],
    }
    failures = []
    for method, path, body, status, field in BAD_INPUT:
        path = path.format(**ids)
        if isinstance(body, dict) and body.get("customer_id") == "{cid}":
            body = {**body, "customer_id": ids["cid"]}
        response = api.call(method, V1 + path, api.admin, json=body)
        try:
            problem = assert_problem(response, status, field)
            assert problem["instance"] == V1 + path.split("?")[0]
        except AssertionError as exc:
            failures.append(f"{method} {path} {body!r}: {exc}")
    assert not failures, "\n".join(failures)
    with transaction(api.factory) as s:
        assert s.scalar(select(func.count(Mailbox.id))) == 1  # nothing was created


def test_malformed_json_is_a_problem_too(api: Api) -> None:
    response = api.call(
        "POST",
        f"{V1}/customers",
        api.admin,
        content=b'{"name": ',
        headers={"Content-Type": "application/json"},
    )
    assert_problem(response, 422)


def test_unknown_api_paths_and_methods_are_problems(api: Api) -> None:
    assert_problem(api.get(f"{V1}/nothing-here"), 404)
    assert_problem(api.call("PUT", f"{V1}/customers", api.admin, json={}), 405)


def test_domain_limit_exceeded_is_a_409_problem(api: Api) -> None:
    c = api.created(f"{V1}/customers", {"name": "Small"})
    d = api.created(f"{V1}/domains", {"customer_id": c["id"], "name": "small.example",
                                      "max_mailboxes": 1})  # fmt: skip
    api.created(f"{V1}/mailboxes", {"address": "one@small.example", "password": "hunter2hunter2"})
    response = api.post(
        f"{V1}/mailboxes", {"address": "two@small.example", "password": "hunter2hunter2"}
    )
    problem = assert_problem(response, 409)
    assert problem["type"] == "urn:mailhost:problem:limit-exceeded"
    assert d["max_mailboxes"] == 1


def test_aliases_and_catchalls_cannot_deliver_to_another_customer(api: Api) -> None:
    """The audit's finding through the API door: each refused with 422 naming the field, the
    same words for another customer's real address and a made-up one, nothing changed."""
    a = seed(api, "Alpha", "alpha.example")
    seed(api, "Bravo", "bravo.example")
    own = api.created(
        f"{V1}/aliases", {"address": "team@alpha.example", "targets": ["bob@alpha.example"]}
    )
    did = a["domain"]["id"]
    details: dict[tuple[str, str], set[str]] = {}
    for target in ("bob@bravo.example", "nobody@bravo.example"):
        for method, path, body, field in (
            ("POST", "/aliases", {"address": "x2@alpha.example", "targets": [target]}, "targets"),
            ("PATCH", f"/aliases/{own['id']}", {"targets": [target]}, "targets"),
            ("PATCH", f"/domains/{did}", {"catchall_target": target}, "catchall_target"),
        ):
            problem = assert_problem(api.call(method, V1 + path, api.admin, json=body), 422, field)
            details.setdefault((method, path), set()).add(problem["detail"].replace(target, "X"))
    assert all(len(words) == 1 for words in details.values()), details
    assert api.get(f"{V1}/aliases/{own['id']}").json()["targets"] == ["bob@alpha.example"]
    assert api.get(f"{V1}/domains/{did}").json()["catchall_target"] is None
    assert [i["address"] for i in api.get(f"{V1}/aliases").json()["items"]] == [
        "team@alpha.example"
    ]
