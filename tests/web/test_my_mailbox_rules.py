"""Customer administrators set and clear a user's auto-reply and forwarding under /my."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.models import AuditEntry
from app.services import selfservice
from tests.web.portal_helpers import PortalClient, portal_app  # noqa: F401
from tests.web.tenant_helpers import Tenant, acme, tenants  # noqa: F401


def test_customer_admin_sets_and_clears_both_audited_as_themselves(
    acme: PortalClient,  # noqa: F811
    tenants: tuple[Tenant, Tenant],  # noqa: F811
    session_factory: sessionmaker[Session],
) -> None:
    a, _ = tenants
    mid = a.mailbox_id
    assert f'href="/my/mailboxes/{mid}/auto-reply"' in acme.get(f"/my/mailboxes/{mid}").text
    bad = acme.post(f"/my/mailboxes/{mid}/auto-reply", {"subject": "", "body": "x"})
    assert bad.status_code == 422 and "enter a subject" in bad.text
    ok = acme.post(
        f"/my/mailboxes/{mid}/auto-reply",
        {"subject": "Away", "body": "Back in May.", "enabled": "on", "ends_on": "2027-05-01"},
    )
    assert ok.status_code == 303
    assert ok.headers["location"] == f"/my/mailboxes/{mid}/auto-reply?done=saved"
    fwd = acme.post(
        f"/my/mailboxes/{mid}/forwarding",
        {"forward_to": "boss@remote.example", "keep_copy": "on"},
    )
    assert fwd.status_code == 303
    page = acme.get(f"/my/mailboxes/{mid}/auto-reply")
    assert page.status_code == 200
    assert "On, from now to 2027-05-01" in page.text
    assert "To boss@remote.example (remote, with SRS; a copy is kept)" in page.text
    assert f'action="/my/mailboxes/{mid}/forwarding"' in page.text
    with session_factory() as s:
        reply = selfservice.get_auto_reply(s, mailbox_id=mid)
        assert reply is not None and reply.subject == "Away"
        entries = s.scalars(
            select(AuditEntry).where(
                AuditEntry.action.in_(("mailbox.auto_reply", "mailbox.forward"))
            )
        ).all()
        assert {(e.actor_type, e.actor, e.customer_id) for e in entries} == {
            ("customer_admin", a.admin, a.customer_id)
        }
    # The own audit view shows them.
    audit = acme.get("/my/audit").text
    assert "mailbox.auto_reply" in audit and "mailbox.forward" in audit
    assert acme.post(f"/my/mailboxes/{mid}/auto-reply", {"action": "clear"}).status_code == 303
    assert acme.post(f"/my/mailboxes/{mid}/forwarding", {"action": "clear"}).status_code == 303
    with session_factory() as s:
        assert selfservice.get_auto_reply(s, mailbox_id=mid) is None
        assert selfservice.get_forward(s, mailbox_id=mid) is None


def test_another_customers_mailbox_is_404_and_left_alone(
    acme: PortalClient,  # noqa: F811
    tenants: tuple[Tenant, Tenant],  # noqa: F811
    session_factory: sessionmaker[Session],
) -> None:
    _, b = tenants
    mid = b.mailbox_id
    assert acme.get(f"/my/mailboxes/{mid}/auto-reply").status_code == 404
    reply = acme.post(
        f"/my/mailboxes/{mid}/auto-reply", {"subject": "Hijack", "body": "x", "enabled": "on"}
    )
    fwd = acme.post(f"/my/mailboxes/{mid}/forwarding", {"forward_to": "thief@remote.example"})
    assert reply.status_code == 404 and fwd.status_code == 404
    assert b.domain not in reply.text
    with session_factory() as s:
        assert selfservice.get_auto_reply(s, mailbox_id=mid) is None
        assert selfservice.get_forward(s, mailbox_id=mid) is None
    # The operator pages stay closed to a customer administrator.
    assert acme.get(f"/mailboxes/{mid}/auto-reply").status_code == 404
