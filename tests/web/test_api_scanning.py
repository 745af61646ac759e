"""Scanning policy and allow/block list endpoints: inheritance, null clears, 422/409/404,
scopes enforced, audited."""

from __future__ import annotations

from sqlalchemy import select

from app.db import transaction
from app.models import AuditEntry
from tests.web.api_helpers import Api, api_fixture, assert_problem  # noqa: F401

V1 = "/api/v1"


def _domain(api: Api) -> tuple[int, int]:
    c = api.created(f"{V1}/customers", {"name": "Acme"})
    d = api.created(f"{V1}/domains", {"customer_id": c["id"], "name": "acme.example"})
    return c["id"], d["id"]


def test_policy_inherits_and_overrides(api: Api) -> None:
    customer_id, domain_id = _domain(api)
    url = f"{V1}/domains/{domain_id}/scan-policy"
    body = api.get(url, api.read).json()
    assert (body["reject_score"], body["tag_score"], body["subject_tag"]) == (15.0, 6.0, "[SPAM]")
    assert body["own"] == {
        "reject_score": None,
        "tag_score": None,
        "subject_tag": None,
        "greylisting": None,
    }
    changed = api.patch(
        f"{V1}/customers/{customer_id}/scan-policy", {"reject_score": 10}, api.provisioning
    )
    assert changed.status_code == 200, changed.text
    assert api.get(url, api.read).json()["reject_score"] == 10.0
    body = api.patch(url, {"tag_score": 3.5, "greylisting": True}, api.provisioning).json()
    assert (body["reject_score"], body["tag_score"], body["greylisting"]) == (10.0, 3.5, True)
    body = api.patch(url, {"tag_score": None}, api.provisioning).json()
    assert body["tag_score"] == 6.0 and body["own"]["greylisting"] is True
    with transaction(api.factory) as s:
        actions = set(s.scalars(select(AuditEntry.action)))
    assert {"customer.scan_policy_changed", "domain.scan_policy_changed"} <= actions


def test_policy_bad_values_are_422_and_change_nothing(api: Api) -> None:
    _, domain_id = _domain(api)
    url = f"{V1}/domains/{domain_id}/scan-policy"
    for body in (
        {"reject_score": "high"},
        {"greylisting": 1},
        {"subject_tag": "x" * 41},
        {"reject_score": 1e9},
        {"nope": 1},
    ):
        assert_problem(api.patch(url, body, api.provisioning), 422)
    response = api.patch(url, {"reject_score": 4, "tag_score": 5}, api.provisioning)
    assert_problem(response, 422)
    assert api.get(url, api.read).json()["own"]["reject_score"] is None
    assert_problem(api.patch(url, {"reject_score": 4}, api.read), 403)
    assert_problem(api.get(f"{V1}/domains/999999/scan-policy", api.read), 404)


def test_scan_lists_add_list_remove(api: Api) -> None:
    _, domain_id = _domain(api)
    base = f"{V1}/domains/{domain_id}/scan-lists"
    added = api.post(f"{base}/allow", {"value": "Partner.Example"}, api.provisioning)
    assert added.status_code == 201, added.text
    assert added.json() == {"list": "allow", "kind": "domain", "value": "partner.example"}
    api.created(f"{base}/block", {"value": "203.0.113.9/24"})
    assert_problem(api.post(f"{base}/allow", {"value": "partner.example"}, api.provisioning), 409)
    assert_problem(api.post(f"{base}/allow", {"value": "bad value!"}, api.provisioning), 422)
    assert_problem(api.post(f"{base}/grey", {"value": "x.example"}, api.provisioning), 422)
    assert api.get(base, api.read).json() == [
        {"list": "allow", "kind": "domain", "value": "partner.example"},
        {"list": "block", "kind": "network", "value": "203.0.113.0/24"},
    ]
    gone = api.delete(f"{base}/block", api.provisioning, params={"value": "203.0.113.0/24"})
    assert gone.status_code == 204, gone.text
    again = api.delete(f"{base}/block", api.provisioning, params={"value": "203.0.113.0/24"})
    assert_problem(again, 404)
