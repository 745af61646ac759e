"""Sending endpoints: read and change may_send and limits per mailbox and customer, audited;
bad values are 422 problem documents that change nothing; scopes enforced."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from app.db import transaction
from app.models import AuditEntry, utcnow
from app.services import sending
from tests.web.api_helpers import Api, api_fixture, assert_problem  # noqa: F401

V1 = "/api/v1"


def _mailbox(api: Api) -> tuple[dict[str, Any], dict[str, Any]]:
    c = api.created(f"{V1}/customers", {"name": "Acme"})
    api.created(f"{V1}/domains", {"customer_id": c["id"], "name": "acme.example"})
    m = api.created(f"{V1}/mailboxes", {"address": "alice@acme.example", "password": "pw-123456"})
    return c, m


def _audit(api: Api, action: str) -> list[str | None]:
    with transaction(api.factory) as s:
        return list(s.scalars(select(AuditEntry.detail).where(AuditEntry.action == action)))


def test_mailbox_sending_read_change_clear(api: Api) -> None:
    _, m = _mailbox(api)
    url = f"{V1}/mailboxes/{m['id']}/sending"
    body = api.get(url, api.read).json()
    assert body["may_send"] is True
    assert body["messages_per_hour"] == {"limit": 200, "own_limit": None, "used": 0}
    assert body["recipients_per_day"] == {"limit": 1000, "own_limit": None, "used": 0}
    assert body["sending_limited"] is False

    changed = api.patch(url, {"may_send": False, "max_messages_per_hour": 20}, api.provisioning)
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["may_send"] is False
    assert body["messages_per_hour"] == {"limit": 20, "own_limit": 20, "used": 0}
    assert _audit(api, "mailbox.sending_changed") == [
        "may_send: True -> False; max_messages_per_hour: default -> 20"
    ]
    # Absent fields stay; null clears back to the default.
    body = api.patch(url, {"max_recipients_per_day": 5}, api.provisioning).json()
    assert body["messages_per_hour"]["own_limit"] == 20 and body["may_send"] is False
    body = api.patch(url, {"max_messages_per_hour": None}, api.provisioning).json()
    assert body["messages_per_hour"] == {"limit": 200, "own_limit": None, "used": 0}
    assert body["recipients_per_day"]["limit"] == 5

    # The flag, raised by a refusal and lowered by an operator.
    api.patch(url, {"may_send": True}, api.provisioning)
    with transaction(api.factory) as s:
        now = utcnow()
        sending.consume_sending(s, mailbox_id=m["id"], recipients=5, now=now)
    with transaction(api.factory) as s:
        with pytest.raises(sending.SendLimitExceeded) as info:
            sending.check_sending(s, mailbox_id=m["id"], now=now, recipients=1)
        sending.record_limit_hit(s, mailbox_id=m["id"], error=info.value, now=now)
    body = api.get(url, api.read).json()
    assert body["sending_limited"] is True
    assert body["recipients_per_day"]["used"] == 5
    assert body["limited_reason"].startswith("mailbox alice@acme.example sent to 5 recipients")
    body = api.patch(url, {"clear_flag": True}, api.provisioning).json()
    assert body["sending_limited"] is False and body["limited_reason"] is None


def test_customer_sending(api: Api) -> None:
    c, _ = _mailbox(api)
    url = f"{V1}/customers/{c['id']}/sending"
    assert api.get(url, api.read).json()["messages_per_hour"]["limit"] == 2000
    body = api.patch(url, {"max_recipients_per_day": 50000}, api.provisioning).json()
    assert body["recipients_per_day"] == {"limit": 50000, "own_limit": 50000, "used": 0}
    assert _audit(api, "customer.sending_changed") == ["max_recipients_per_day: default -> 50000"]


@pytest.mark.parametrize(
    "patch",
    [
        {"max_messages_per_hour": -1},
        {"max_messages_per_hour": 0},
        {"max_messages_per_hour": 10_000_001},
        {"max_messages_per_hour": "12"},
        {"max_messages_per_hour": 1.5},
        {"may_send": "yes"},
        {"max_per_hour": 5},
    ],
)
def test_bad_values_are_422_and_change_nothing(api: Api, patch: dict[str, Any]) -> None:
    c, m = _mailbox(api)
    url = f"{V1}/mailboxes/{m['id']}/sending"
    before = api.get(url, api.read).json()
    assert_problem(api.patch(url, {"may_send": False, **patch}, api.provisioning), 422)
    assert api.get(url, api.read).json() == before
    if "max_messages_per_hour" in patch:
        assert_problem(
            api.patch(f"{V1}/customers/{c['id']}/sending", patch, api.provisioning),
            422,
            "max_messages_per_hour",
        )
    assert _audit(api, "mailbox.sending_changed") == []


def test_scopes_and_not_found(api: Api) -> None:
    _, m = _mailbox(api)
    url = f"{V1}/mailboxes/{m['id']}/sending"
    assert_problem(api.patch(url, {"may_send": False}, api.read), 403)
    assert_problem(api.get(url, api.billing), 403)
    assert_problem(api.call("GET", url), 401)
    assert_problem(api.get(f"{V1}/mailboxes/999999/sending", api.read), 404)
    assert_problem(api.patch(f"{V1}/customers/999999/sending", {}, api.provisioning), 404)
