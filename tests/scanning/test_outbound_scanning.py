"""Outbound scanning at submission: spam from an authenticated (compromised) account is
refused 550 5.7.1, nothing is stored or queued, and the mailbox is flagged; clean mail goes."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.maildir import MaildirStore
from app.models import AuditEntry, Mailbox, OutboundMessage
from tests.protocol.smtp_helpers import ADDRESSES, new_messages, seed_world
from tests.protocol.submission_helpers import SubmissionThread, message, starttls_client
from tests.scanners import GTUBE

USER = ADDRESSES["user"]
OTHER = ADDRESSES["other"]


def test_spam_from_an_account_is_refused_and_the_mailbox_flagged(
    scan_settings: Settings,
    tls_files: tuple[Path, Path],
    tmp_path: Path,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
) -> None:
    seed_world(session_factory, store)
    settings = scan_settings.model_copy(
        update={
            "tls_cert_file": tls_files[0],
            "tls_key_file": tls_files[1],
            "submission_port": 0,
            "submissions_port": 0,
            "spool_root": tmp_path / "spool",
        }
    )
    server = SubmissionThread(settings, session_factory, store).start()
    try:
        with starttls_client(server.port, tls_files[0], login=USER) as client:
            spam = message(USER, OTHER, extra="") + GTUBE + b"\r\n"
            with pytest.raises(smtplib.SMTPDataError) as refused:
                client.sendmail(USER, [OTHER, "bob@remote.example"], spam)
            assert refused.value.smtp_code == 550
            text = refused.value.smtp_error.decode()
            assert text.startswith("5.7.1 Message refused as spam") and "flagged" in text
            client.sendmail(USER, [OTHER], message(USER, OTHER, subject="fine"))
    finally:
        server.stop()
    [stored] = new_messages(store, OTHER)  # only the clean one
    assert b"Subject: fine" in stored
    with session_factory() as s:
        assert s.scalars(select(OutboundMessage)).all() == []
        mailbox = s.scalars(select(Mailbox).where(Mailbox.local_part == "user")).first()
        assert mailbox is not None and mailbox.sending_limited_until is not None
        assert (mailbox.sending_limited_reason or "").startswith("outbound spam: Gtube")
        actions = list(s.scalars(select(AuditEntry.action)))
        assert "mailbox.outbound_spam" in actions
