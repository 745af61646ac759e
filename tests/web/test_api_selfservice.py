"""/api/v1/mailboxes/{id}/forwarding and /auto-reply: scopes, validation, set and clear."""

from __future__ import annotations

from sqlalchemy import select

from app.db import transaction
from app.models import AuditEntry
from tests.factories import make_mailbox
from tests.web.api_helpers import Api, api_fixture, assert_problem  # noqa: F401


def _mailbox(api: Api) -> int:  # noqa: F811
    with transaction(api.factory) as s:
        make_mailbox(s, "dest@hosted.example")
        return make_mailbox(s, "user@hosted.example").id


def test_forwarding_put_get_delete(api: Api) -> None:  # noqa: F811
    mid = _mailbox(api)
    url = f"/api/v1/mailboxes/{mid}/forwarding"
    assert api.get(url).json() == {
        "mailbox_id": mid,
        "configured": False,
        "forward_to": None,
        "keep_copy": None,
        "hosted": None,
    }
    assert (
        api.call("PUT", url, api.read, json={"forward_to": "x@remote.example"}).status_code == 403
    )
    assert_problem(api.call("PUT", url, api.admin, json={"forward_to": "nope"}), 422, "forward_to")
    assert_problem(
        api.call("PUT", url, api.admin, json={"forward_to": "x@remote.example", "keep_copy": 1}),
        422,
    )
    put = api.call(
        "PUT", url, api.admin, json={"forward_to": "DEST@hosted.example", "keep_copy": False}
    )
    assert put.status_code == 200, put.text
    assert put.json()["forward_to"] == "dest@hosted.example" and put.json()["hosted"] is True
    assert api.get(url, api.read).json()["configured"] is True
    assert api.delete(url).status_code == 204
    assert api.get(url).json()["configured"] is False
    assert_problem(api.get("/api/v1/mailboxes/999999/forwarding"), 404)
    with api.factory() as s:
        actors = s.scalars(
            select(AuditEntry.actor_type).where(AuditEntry.action.like("mailbox.forward%"))
        ).all()
    assert actors == ["token", "token"]


def test_auto_reply_put_get_delete(api: Api) -> None:  # noqa: F811
    mid = _mailbox(api)
    url = f"/api/v1/mailboxes/{mid}/auto-reply"
    assert api.get(url).json()["configured"] is False
    backwards = {
        "subject": "Ill",
        "body": "Away.",
        "starts_on": "2026-12-10",
        "ends_on": "2026-12-01",
    }
    assert_problem(api.call("PUT", url, api.admin, json=backwards), 422, "ends_on")
    assert_problem(
        api.call("PUT", url, api.admin, json={"subject": "", "body": "x"}), 422, "subject"
    )
    ok = api.call(
        "PUT", url, api.admin, json={"subject": "Ill", "body": "Away.", "ends_on": "2026-12-24"}
    )
    assert ok.status_code == 200, ok.text
    assert ok.json() == {
        "mailbox_id": mid,
        "configured": True,
        "enabled": True,
        "subject": "Ill",
        "body": "Away.",
        "starts_on": None,
        "ends_on": "2026-12-24",
    }
    assert api.delete(url, api.read).status_code == 403
    assert api.delete(url).status_code == 204
    assert api.get(url).json()["configured"] is False
