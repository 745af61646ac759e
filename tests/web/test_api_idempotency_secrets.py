"""Idempotency records keep no guessable trace of the password of a mailbox-create request."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import select

from app.db import transaction
from app.models import IdempotencyRecord
from app.services.idempotency import request_fingerprint
from tests.web.api_helpers import Api, api_fixture, assert_problem  # noqa: F401

V1 = "/api/v1"
PASSWORD = "correct horse battery staple"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_the_stored_fingerprint_is_keyed_and_replays_and_conflicts_still_work(api: Api) -> None:
    c = api.created(f"{V1}/customers", {"name": "Secretive"})
    api.created(f"{V1}/domains", {"customer_id": c["id"], "name": "secret.example"})
    body = {"address": "ann@secret.example", "password": PASSWORD}
    key = {"Idempotency-Key": "create-ann"}
    first = api.post(f"{V1}/mailboxes", body, headers=key)
    assert first.status_code == 201, first.text

    with transaction(api.factory) as s:
        record = s.scalars(select(IdempotencyRecord)).one()
        stored, response_body = record.request_hash, record.response_body
    raw = json.dumps(body)
    # Not a plain SHA-256 of the body, of the old "METHOD path\nbody" text, or of the password.
    candidates = [
        raw,
        json.dumps(body, separators=(",", ":")),
        PASSWORD,
        f"POST {V1}/mailboxes\n{raw}",
        f'POST {V1}/mailboxes\n{{"address":"ann@secret.example","password":"{PASSWORD}",'
        '"password_hash":null,"quota_bytes":null,"pop3_enabled":true}',
    ]
    assert stored not in {_sha256(text) for text in candidates}
    assert PASSWORD not in stored and PASSWORD not in response_body
    # It is the keyed MAC of app.services.idempotency: it changes with the server secret, so
    # it is no unkeyed function of the request (nothing a database reader can recompute).
    fields = {
        "address": "ann@secret.example",
        "password": PASSWORD,
        "password_hash": None,
        "quota_bytes": None,
        "pop3_enabled": True,
    }

    def fingerprint(secret: bytes) -> str:
        return request_fingerprint(
            secret=secret,
            method="POST",
            path=f"{V1}/mailboxes",
            body_fields=fields,
            secret_fields={"password", "password_hash"},
        )

    server_secret = api.client.app.state.secret_key  # type: ignore[attr-defined]
    assert stored == fingerprint(server_secret)
    assert stored != fingerprint(b"another server's secret, 32 characters or more")

    # A retry with the same key and body replays the first response.
    again = api.post(f"{V1}/mailboxes", body, headers=key)
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    # The same key with another password is a different request: refused, nothing changes.
    other = api.post(f"{V1}/mailboxes", {**body, "password": PASSWORD + "!"}, headers=key)
    assert_problem(other, 422, "Idempotency-Key")
    with transaction(api.factory) as s:
        assert s.scalars(select(IdempotencyRecord)).one().request_hash == stored
