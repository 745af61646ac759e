"""Operators set and clear a mailbox's auto-reply and forwarding in the portal."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.services import selfservice
from tests.factories import make_mailbox
from tests.web.portal_helpers import PortalClient, add_operator, portal_app  # noqa: F401


def _box(factory: sessionmaker[Session]) -> int:
    with transaction(factory) as s:
        return make_mailbox(s, "ill@hosted.example").id


def test_support_operator_sets_and_clears_both(
    portal_app: Any,  # noqa: F811
    session_factory: sessionmaker[Session],
) -> None:
    from fastapi.testclient import TestClient

    mid = _box(session_factory)
    add_operator(session_factory, "sam", "support")
    with TestClient(portal_app) as client:
        portal = PortalClient(client)
        assert portal.login("sam").status_code == 303
        assert f'href="/mailboxes/{mid}/auto-reply"' in portal.get(f"/mailboxes/{mid}").text
        bad = portal.post(
            f"/mailboxes/{mid}/auto-reply", {"subject": "", "body": "x", "enabled": "on"}
        )
        assert bad.status_code == 422 and "enter a subject" in bad.text
        ok = portal.post(
            f"/mailboxes/{mid}/auto-reply",
            {
                "subject": "Ill",
                "body": "Call the office.",
                "enabled": "on",
                "ends_on": "2027-01-01",
            },
        )
        assert ok.status_code == 303
        fwd = portal.post(f"/mailboxes/{mid}/forwarding", {"forward_to": "boss@remote.example"})
        assert fwd.status_code == 303
        page = portal.get(f"/mailboxes/{mid}/auto-reply").text
        assert "On, from now to 2027-01-01" in page
        assert "To boss@remote.example (remote, with SRS; no copy kept)" in page
        with session_factory() as s:
            assert selfservice.get_auto_reply(s, mailbox_id=mid) is not None
        assert portal.post(f"/mailboxes/{mid}/auto-reply", {"action": "clear"}).status_code == 303
        assert portal.post(f"/mailboxes/{mid}/forwarding", {"action": "clear"}).status_code == 303
        with session_factory() as s:
            assert selfservice.get_auto_reply(s, mailbox_id=mid) is None
            assert selfservice.get_forward(s, mailbox_id=mid) is None
        assert portal.get("/mailboxes/999999/auto-reply").status_code == 404
