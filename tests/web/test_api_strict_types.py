"""Strict numbers and flags in API bodies (issue 10): ``true`` is not customer 1.

Pydantic's lax mode turned ``true`` into 1, ``"1"`` into 1 and ``1.0`` into 1; the schemas now
take JSON integers for ids and sizes and JSON booleans for flags, as the documented clients
send them. Every field of every schema is covered by ``test_route_table.py``.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.db import transaction
from app.models import Domain, Mailbox
from tests.web.api_helpers import Api, api_fixture, assert_problem  # noqa: F401

V1 = "/api/v1"


@pytest.mark.parametrize("customer_id", [True, "1", 1.0, 1.5, None])
def test_a_domain_needs_a_json_integer_customer_id(api: Api, customer_id: object) -> None:
    api.created(f"{V1}/customers", {"name": "Acme"})  # customer 1 exists
    response = api.post(f"{V1}/domains", {"customer_id": customer_id, "name": "acme.example"})
    assert_problem(response, 422, "customer_id")
    with transaction(api.factory) as session:
        assert session.scalar(select(func.count(Domain.id))) == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("quota_bytes", "1073741824"), ("quota_bytes", True), ("pop3_enabled", 1),
     ("pop3_enabled", "yes")],
)  # fmt: skip
def test_mailbox_sizes_and_flags_are_strict(api: Api, field: str, value: object) -> None:
    customer = api.created(f"{V1}/customers", {"name": "Acme"})
    api.created(f"{V1}/domains", {"customer_id": customer["id"], "name": "acme.example"})
    body = {"address": "bob@acme.example", "password": "hunter2hunter2", field: value}
    assert_problem(api.post(f"{V1}/mailboxes", body), 422, field)
    with transaction(api.factory) as session:
        assert session.scalar(select(func.count(Mailbox.id))) == 0


def test_what_documented_clients_send_is_still_accepted(api: Api) -> None:
    as_text = api.created(f"{V1}/customers", {"name": "Acme", "price_per_mailbox": "4.99"})
    as_number = api.created(f"{V1}/customers", {"name": "Beta", "price_per_mailbox": 4.99})
    assert as_text["price_per_mailbox"] == as_number["price_per_mailbox"] == "4.9900"
    domain = api.created(
        f"{V1}/domains",
        {"customer_id": as_text["id"], "name": "acme.example", "max_mailboxes": 10},
    )
    assert domain["max_mailboxes"] == 10
    mailbox = api.created(
        f"{V1}/mailboxes",
        {
            "address": "bob@acme.example",
            "password": "hunter2hunter2",
            "quota_bytes": 1073741824,
            "pop3_enabled": False,
        },
    )
    assert (mailbox["quota_bytes"], mailbox["pop3_enabled"]) == (1073741824, False)
