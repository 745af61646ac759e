"""A message whose header section the scan rewrote (forged Authentication-Results removed,
the subject tagged, X-Spam-* and our Authentication-Results added), stored for two mailboxes
and forwarded by one of them to a remote address (app/delivery_rules.py): every copy is the
rewritten head and the original body exactly once, and the forward queued is the stored copy
byte for byte (less the Return-Path line, a final delivery's field). In memory and spilled to
disk (over the 256 KiB the MX keeps in memory)."""

from __future__ import annotations

import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.maildir import MaildirStore
from app.services import mailboxes, selfservice
from app.services.audit import CLI_ACTOR
from app.spool import SpoolStore
from tests.protocol.outbound_helpers import rows
from tests.protocol.smtp_helpers import ADDRESSES, IngressThread, new_messages
from tests.scanning.test_ingress_scanning import SENDER, message, sender_domain
from tests.scanning.test_policy_scanning import set_domain

USER = ADDRESSES["user"]
OTHER = ADDRESSES["other"]  # forwards to bob@remote.example and keeps a copy
__all__ = ["sender_domain"]  # the module fixture publishing sender.example's SPF
FORGED = "Authentication-Results: mx.mailhost.test; dkim=pass header.d=bank.example\r\n"


@pytest.mark.parametrize("lines", [3, 5000], ids=["in-memory", "spilled"])
def test_forwarded_and_stored_copies_of_a_rewritten_message_match(
    scan_start: Callable[..., IngressThread],
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    tmp_path: Path,
    lines: int,
) -> None:
    ingress = scan_start(spool_root=tmp_path / "spool")
    set_domain(session_factory, "hosted.example", reject_score=100.0, tag_score=-60.0)
    with transaction(session_factory) as s:
        other = mailboxes.get_mailbox_by_address(s, address=OTHER)
        selfservice.set_forward(
            s, actor=CLI_ACTOR, mailbox_id=other.id, address="bob@remote.example", keep_copy=True
        )
    body = "".join(f"line {n:05d} of the original body, kept as it was\r\n" for n in range(lines))
    data = message(body, extra=FORGED)
    with smtplib.SMTP(
        "127.0.0.1", ingress.port, local_hostname="client.sender.example", timeout=30
    ) as client:
        client.ehlo()
        client.mail(SENDER)
        assert client.rcpt(USER)[0] == 250 and client.rcpt(OTHER)[0] == 250
        code, text = client.data(data)
    assert code == 250, text
    original_body = body.replace("\r\n", "\n").encode()
    [mine] = new_messages(store, USER)
    [kept] = new_messages(store, OTHER)
    for copy in (mine, kept):
        head, rest = copy.split(b"\n\n", 1)
        assert rest == original_body  # the body once, untouched
        assert b"dkim=pass header.d=bank.example" not in head  # the forged result is gone
        assert head.count(b"Authentication-Results: mx.mailhost.test;") == 1
        assert head.count(b"Subject: [SPAM] Lunch") == 1 and b"Subject: Lunch" not in head
        assert b"X-Spam-Status: Yes" in head and b"X-Spam-Score:" in head
        assert head.count(b"Message-ID: <lunch-1@sender.example>") == 1
    [(queued, recipient)] = rows(session_factory)
    assert recipient.address == "bob@remote.example"
    forwarded = SpoolStore(tmp_path / "spool").read(queued.spool_id).replace(b"\r\n", b"\n")
    assert kept.startswith(b"Return-Path: <")
    assert forwarded == kept.split(b"\n", 1)[1]


def test_a_forwarding_loop_is_seen_in_a_rewritten_head(
    scan_start: Callable[..., IngressThread],
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    tmp_path: Path,
) -> None:
    """The loop check reads the message's own head (its Delivered-To fields) even when the
    scan rewrote that head into the copy's trace: the copy is kept, not forwarded again."""
    ingress = scan_start(spool_root=tmp_path / "spool")
    set_domain(session_factory, "hosted.example", reject_score=100.0, tag_score=-60.0)
    with transaction(session_factory) as s:
        other = mailboxes.get_mailbox_by_address(s, address=OTHER)
        selfservice.set_forward(
            s, actor=CLI_ACTOR, mailbox_id=other.id, address="bob@remote.example", keep_copy=True
        )
    data = message(extra=FORGED + f"Delivered-To: {OTHER}\r\n")
    with smtplib.SMTP(
        "127.0.0.1", ingress.port, local_hostname="client.sender.example", timeout=30
    ) as client:
        client.ehlo()
        client.mail(SENDER)
        assert client.rcpt(OTHER)[0] == 250
        code, text = client.data(data)
    assert code == 250, text
    assert len(new_messages(store, OTHER)) == 1
    assert rows(session_factory) == []  # not forwarded: it has been here before
