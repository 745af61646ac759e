"""Forwarding and auto-replies on submission's local delivery (the same rules as the MX)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MaildirStore
from app.models import OutboundMessage, OutboundRecipient
from app.services import selfservice
from app.services.audit import CLI_ACTOR
from app.services.mailboxes import get_mailbox_by_address
from tests.protocol.smtp_helpers import ADDRESSES, new_messages
from tests.protocol.submission_helpers import SubmissionThread, message, starttls_client

USER = ADDRESSES["user"]
OTHER = ADDRESSES["other"]


def _queued(factory: sessionmaker[Session]) -> list[tuple[str, str, str]]:
    with factory() as s:
        rows = s.execute(
            select(OutboundMessage.origin, OutboundMessage.sender, OutboundRecipient.address)
            .join(OutboundRecipient)
            .order_by(OutboundRecipient.id)
        ).all()
    return [(origin, sender, address) for origin, sender, address in rows]


def test_a_user_mails_a_colleague_who_forwards_and_is_away(
    submission: SubmissionThread,
    submission_settings: Settings,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    tls_files: tuple[Path, Path],
) -> None:
    with transaction(session_factory) as s:
        other = get_mailbox_by_address(s, address=OTHER)
        selfservice.set_forward(
            s, actor=CLI_ACTOR, mailbox_id=other.id, address="desk@remote.example", keep_copy=False
        )
        selfservice.set_auto_reply(
            s, actor=CLI_ACTOR, mailbox_id=other.id, subject="Away", body="Back on Monday."
        )
    client = starttls_client(submission.port, tls_files[0], login=USER)
    try:
        assert client.sendmail(USER, [OTHER], message(USER, OTHER)) == {}
    finally:
        client.quit()
    assert new_messages(store, OTHER) == []  # forwarded without a copy
    queued = _queued(session_factory)
    [forward] = [q for q in queued if q[0] == "forward"]
    assert forward[2] == "desk@remote.example"
    assert forward[1].startswith("SRS0=") and forward[1].endswith("@hosted.example")
    assert [q for q in queued if q[0] == "autoreply"] == [("autoreply", "", USER)]
