"""DKIM endpoints: list with records, generate / rotate, retire, scopes and problem documents;
the record the API returns verifies a signature made with the service's key over real DNS."""

from __future__ import annotations

from typing import Any

from app import dkim
from app.db import transaction
from app.services import dkim as dkim_service
from tests.dkim_helpers import signature_tags, verify
from tests.dnsserver import TestDNSServer
from tests.web.api_helpers import Api, api_fixture, assert_problem  # noqa: F401

V1 = "/api/v1"
MESSAGE = b"From: a@acme.example\r\nTo: b@remote.example\r\nSubject: s\r\n\r\nbody\r\n"


def _domain(api: Api) -> dict[str, Any]:
    c = api.created(f"{V1}/customers", {"name": "Acme"})
    return api.created(f"{V1}/domains", {"customer_id": c["id"], "name": "acme.example"})


def _signed(api: Api) -> bytes:
    with transaction(api.factory) as s:
        key = dkim_service.signing_key_for(s, domain="acme.example")
    assert key is not None
    return dkim.sign_message(MESSAGE, key)


def test_generate_rotate_retire_and_the_records_verify(api: Api, dns_server: TestDNSServer) -> None:
    d = _domain(api)
    url = f"{V1}/domains/{d['id']}/dkim"
    empty = api.get(url, api.read).json()
    assert empty["keys"] == []
    assert [r["purpose"] for r in empty["records"]] == ["mx", "spf", "dmarc"]

    made = api.post(url, {"selector": "s1", "algorithm": "ed25519-sha256"}, api.provisioning)
    assert made.status_code == 201, made.text
    assert made.headers["Location"] == url
    key = made.json()
    assert (key["selector"], key["state"], key["bits"]) == ("s1", "active", 256)
    assert "private" not in made.text.lower()

    records = api.get(url, api.read).json()["records"]
    dkim_records = [r for r in records if r["purpose"] == "dkim"]
    assert [r["value"] for r in dkim_records] == [key["record_value"]]
    for r in dkim_records:
        dns_server.zone.txt(r["name"], r["value"])
    assert verify(_signed(api), dns_server)

    # Rotation: a POST without a body makes an RSA key (the default) the signing key.
    rotated = api.post(url, None, api.provisioning)
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()
    assert (new["algorithm"], new["bits"], new["state"]) == ("rsa-sha256", 2048, "active")
    overview = api.get(url, api.read).json()
    assert [(k["selector"], k["state"]) for k in overview["keys"]] == [
        (new["selector"], "active"),
        ("s1", "published"),
    ]
    names = [r["name"] for r in overview["records"] if r["purpose"] == "dkim"]
    assert names == [f"{new['selector']}._domainkey.acme.example.", "s1._domainkey.acme.example."]
    dns_server.zone.txt(new["record_name"], new["record_value"])
    signed = _signed(api)
    assert signature_tags(signed)["s"] == new["selector"]
    assert verify(signed, dns_server)

    retired = api.post(f"{url}/s1/retire", None, api.provisioning)
    assert retired.status_code == 200, retired.text
    assert retired.json()["state"] == "retired" and retired.json()["retired_at"]
    overview = api.get(url, api.read).json()
    assert [r["selector"] for r in overview["records"] if r["purpose"] == "dkim"] == [
        new["selector"]
    ]
    assert {k["selector"] for k in overview["keys"]} == {new["selector"], "s1"}


def test_problems(api: Api) -> None:
    d = _domain(api)
    url = f"{V1}/domains/{d['id']}/dkim"
    assert_problem(api.get(f"{V1}/domains/999/dkim", api.read), 404, "domain_id")
    assert_problem(api.post(f"{V1}/domains/999/dkim", {}, api.provisioning), 404, "domain_id")
    assert_problem(api.post(url, {"algorithm": "rsa-sha1"}, api.provisioning), 422, "algorithm")
    assert_problem(api.post(url, {"selector": "a_b"}, api.provisioning), 422, "selector")
    assert_problem(api.post(url, {"bits": 4096}, api.provisioning), 422, "bits")
    assert_problem(api.post(f"{url}/nope/retire", None, api.provisioning), 404, "selector")
    assert api.post(url, {"selector": "s1"}, api.provisioning).status_code == 201
    assert_problem(api.post(url, {"selector": "s1"}, api.provisioning), 409, "selector")
    assert api.post(f"{url}/s1/retire", None, api.provisioning).status_code == 200
    assert_problem(api.post(f"{url}/s1/retire", None, api.provisioning), 409, "selector")
    # Scopes: reading needs read, changing needs provisioning.
    assert_problem(api.get(url, api.provisioning), 403)
    assert_problem(api.post(url, {}, api.read), 403)
    assert_problem(api.call("GET", url), 401)
    keys = api.get(url, api.read).json()["keys"]
    assert [k["selector"] for k in keys] == ["s1"]  # the refusals made nothing


def test_idempotent_generate(api: Api) -> None:
    d = _domain(api)
    url = f"{V1}/domains/{d['id']}/dkim"
    headers = {"Idempotency-Key": "k1"}
    first = api.post(url, {"algorithm": "ed25519-sha256"}, api.provisioning, headers=headers)
    again = api.post(url, {"algorithm": "ed25519-sha256"}, api.provisioning, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert len(api.get(url, api.read).json()["keys"]) == 1
