"""The review's out-of-range inputs (issue 10): 404 for ids in paths, 422 for the rest, no 500.

On SQLite an integer beyond 64 bits raised ``OverflowError`` in the driver and a 60,000
character search "LIKE or GLOB pattern too complex"; both were unhandled 500s.
The route-generated table over every route is ``test_route_table.py``.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from app.db import transaction
from app.models import Domain
from tests.web.api_helpers import Api, api_fixture, assert_problem  # noqa: F401
from tests.web.portal_helpers import PortalClient, admin, portal_app  # noqa: F401
from web.params import ID_MAX

HUGE = "99999999999999999999999"
LONG_Q = "a" * 60_000


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        ("GET", f"/customers/{HUGE}", 404),
        ("GET", f"/customers/{2**63}", 404),
        ("GET", f"/customers/{2**63 - 1}", 404),
        ("GET", f"/customers/{ID_MAX}", 404),  # in range, no such row
        ("GET", f"/audit?before={2**63 - 1}", 200),  # audit ids are 64-bit
        ("GET", f"/mailboxes/{HUGE}", 404),
        ("POST", f"/mailboxes/{HUGE}/status", 404),
        ("GET", f"/customers?after={HUGE}", 422),
        ("GET", f"/mailboxes?after={HUGE}", 422),
        ("GET", f"/mailboxes?domain={HUGE}", 422),
        ("GET", f"/audit?before={HUGE}", 422),
        ("GET", f"/customers?q={LONG_Q}", 422),
        ("GET", f"/domains?q={LONG_Q}", 422),
        ("GET", f"/mailboxes?q={LONG_Q}", 422),
        ("GET", f"/aliases?q={LONG_Q}", 422),
        ("GET", f"/audit?object={LONG_Q}", 422),
    ],
)
def test_portal_refuses_out_of_range_input_with_its_error_page(
    admin: PortalClient,  # noqa: F811
    method: str,
    url: str,
    status: int,
) -> None:
    response = admin.get(url) if method == "GET" else admin.post(url, {"status": "suspended"})
    assert response.status_code == status, response.text[:500]
    assert response.headers["content-type"].startswith("text/html")
    if status != 200:
        assert f'<p class="status-code">{status}</p>' in response.text


def test_portal_search_of_the_maximum_length_still_works(admin: PortalClient) -> None:  # noqa: F811
    assert admin.get("/customers?q=" + "a" * 200).status_code == 200
    assert admin.get("/customers?q=" + "a" * 201).status_code == 422


def test_portal_domain_form_with_a_huge_customer_number_names_the_field(
    admin: PortalClient,  # noqa: F811
) -> None:
    response = admin.post("/domains/new", {"name": "acme.example", "customer": HUGE})
    assert response.status_code == 422, response.text[:500]
    assert f"no customer &#39;{HUGE}&#39;" in response.text


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "field"),
    [
        ("GET", f"/customers/{HUGE}", None, 422, "customer_id"),
        ("GET", f"/customers/{2**63 - 1}", None, 422, "customer_id"),
        ("GET", f"/customers/{ID_MAX}", None, 404, "customer_id"),  # in range, no such row
        ("GET", f"/customers/{ID_MAX + 1}", None, 422, "customer_id"),
        ("POST", f"/mailboxes/{HUGE}/suspend", None, 422, "mailbox_id"),
        ("GET", f"/mailboxes?customer_id={HUGE}", None, 422, "customer_id"),
        ("GET", f"/billing/events?after={HUGE}", None, 422, "after"),
        ("GET", f"/customers?search={LONG_Q}", None, 422, "search"),
        ("POST", "/domains", {"customer_id": 2**70, "name": "a.example"}, 422, "customer_id"),
        ("POST", "/domains", {"customer_id": 2**63 - 1, "name": "a.example"}, 422, "customer_id"),
        ("POST", "/domains", {"customer_id": ID_MAX, "name": "a.example"}, 404, None),
    ],
)
def test_api_refuses_out_of_range_input_with_a_problem(
    api: Api, method: str, path: str, body: object, status: int, field: str | None
) -> None:
    response = api.call(method, "/api/v1" + path, api.admin, json=body)
    assert_problem(response, status, field)
    with transaction(api.factory) as session:
        assert session.scalar(select(func.count(Domain.id))) == 0
