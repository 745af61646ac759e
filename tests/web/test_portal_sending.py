"""Portal sending controls: the mailbox page and list show the "sending limited" flag, admins
change may_send and limits (audited), bad values show the field's error and change nothing,
support operators only read."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.models import AuditEntry, Customer, Mailbox, utcnow
from app.services import sending
from tests.factories import make_mailbox
from tests.web.portal_helpers import (  # noqa: F401
    PortalClient,
    admin,
    field_error,
    input_value,
    portal_app,
    support,
)


def _mailbox(factory: sessionmaker[Session]) -> tuple[int, int]:
    with transaction(factory) as s:
        m = make_mailbox(s, "alice@hosted.example")
        return m.id, m.domain.customer_id


def _limit_hit(factory: sessionmaker[Session], mailbox_id: int) -> None:
    now = utcnow()
    with transaction(factory) as s:
        box = s.get(Mailbox, mailbox_id)
        assert box is not None
        box.max_messages_per_hour = 1
        sending.consume_sending(s, mailbox_id=mailbox_id, recipients=2, now=now)
    with transaction(factory) as s:
        with pytest.raises(sending.SendLimitExceeded) as info:
            sending.check_sending(s, mailbox_id=mailbox_id, now=now)
        sending.record_limit_hit(s, mailbox_id=mailbox_id, error=info.value, now=now)


def test_flag_on_page_and_list_then_cleared(
    admin: PortalClient,  # noqa: F811
    session_factory: sessionmaker[Session],
) -> None:
    mailbox_id, _ = _mailbox(session_factory)
    page = admin.get(f"/mailboxes/{mailbox_id}").text
    assert 'id="sending-limited"' not in page
    assert "0 of 200 messages this hour" in page
    assert "sending limited" not in admin.get("/mailboxes").text

    _limit_hit(session_factory, mailbox_id)
    page = admin.get(f"/mailboxes/{mailbox_id}").text
    assert 'id="sending-limited"' in page
    assert "mailbox alice@hosted.example sent 1 messages this hour (limit 1 per hour)" in page
    assert "1 of 1 messages this hour, 2 of 1000 recipients today" in page
    assert "sending limited</span>" in admin.get("/mailboxes").text

    cleared = admin.post(f"/mailboxes/{mailbox_id}/sending/clear")
    assert cleared.status_code == 303
    assert 'id="sending-limited"' not in admin.get(f"/mailboxes/{mailbox_id}").text
    assert "sending limited</span>" not in admin.get("/mailboxes").text
    with transaction(session_factory) as s:
        details = s.scalars(
            select(AuditEntry.detail).where(AuditEntry.action == "mailbox.sending_changed")
        ).all()
    assert details == ["sending limited flag cleared"]


def test_admin_changes_mailbox_and_customer(
    admin: PortalClient,  # noqa: F811
    session_factory: sessionmaker[Session],
) -> None:
    mailbox_id, customer_id = _mailbox(session_factory)
    saved = admin.post(
        f"/mailboxes/{mailbox_id}/sending",
        {"max_messages_per_hour": "25", "max_recipients_per_day": ""},  # may_send unticked
    )
    assert saved.status_code == 303, saved.text
    page = admin.get(f"/mailboxes/{mailbox_id}/sending").text
    assert '<dd id="may-send">no</dd>' in page
    assert "0 of 25" in page and "0 of 1000 (platform default)" in page
    assert input_value(page, "max_messages_per_hour") == "25"
    with transaction(session_factory) as s:
        box = s.get(Mailbox, mailbox_id)
        assert box is not None
        assert (box.may_send, box.max_messages_per_hour, box.max_recipients_per_day) == (
            False,
            25,
            None,
        )
        entry = s.scalars(
            select(AuditEntry).where(AuditEntry.action == "mailbox.sending_changed")
        ).one()
        assert (entry.actor_type, entry.actor) == ("operator", "alice")

    saved = admin.post(f"/customers/{customer_id}/sending", {"max_messages_per_hour": "5000"})
    assert saved.status_code == 303, saved.text
    page = admin.get(f"/customers/{customer_id}/sending").text
    assert "0 of 5000" in page
    assert f'href="/customers/{customer_id}/sending"' in admin.get(f"/customers/{customer_id}").text


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-3", "max_messages_per_hour must be at least 1, not -3"),
        ("many", "must be a whole number or &#39;default&#39;, not &#39;many&#39;"),
        ("99999999", "must be at most 10000000"),
    ],
)
def test_bad_values_show_the_error_and_change_nothing(
    admin: PortalClient,  # noqa: F811
    session_factory: sessionmaker[Session],
    value: str,
    message: str,
) -> None:
    mailbox_id, customer_id = _mailbox(session_factory)
    bad = admin.post(
        f"/mailboxes/{mailbox_id}/sending", {"may_send": "on", "max_messages_per_hour": value}
    )
    assert bad.status_code == 422
    assert message in (field_error(bad.text, "max_messages_per_hour") or "")
    assert input_value(bad.text, "max_messages_per_hour") == value
    bad = admin.post(f"/customers/{customer_id}/sending", {"max_messages_per_hour": value})
    assert bad.status_code == 422
    assert message in (field_error(bad.text, "max_messages_per_hour") or "")
    with transaction(session_factory) as s:
        box = s.get(Mailbox, mailbox_id)
        customer = s.get(Customer, customer_id)
        assert box is not None and customer is not None
        assert box.max_messages_per_hour is None and customer.max_messages_per_hour is None
        assert s.scalars(select(AuditEntry).where(AuditEntry.action.like("%sending%"))).all() == []


def test_support_reads_but_cannot_change(
    support: PortalClient,  # noqa: F811
    session_factory: sessionmaker[Session],
) -> None:
    mailbox_id, customer_id = _mailbox(session_factory)
    page = support.get(f"/mailboxes/{mailbox_id}/sending")
    assert page.status_code == 200 and "Changes need an administrator" in page.text
    assert support.post(f"/mailboxes/{mailbox_id}/sending", {"may_send": ""}).status_code == 403
    assert support.post(f"/mailboxes/{mailbox_id}/sending/clear").status_code == 403
    assert support.post(f"/customers/{customer_id}/sending", {}).status_code == 403
    with transaction(session_factory) as s:
        box = s.get(Mailbox, mailbox_id)
        assert box is not None and box.may_send is True
