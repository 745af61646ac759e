"""Auto-replies (RFC 3834) through the real MX: a table of messages and whether each gets one.

Each row sends one message with smtplib to a mailbox whose auto-reply is on, then counts the
auto-reply rows queued for that row's sender (every row has a sender of its own, so the
"once per sender" rule does not mix rows up). The reply's form, the once-per-sender rule and
its delivery to a hosted sender by the agent have their own tests below.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import smtplib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MailboxRef, MaildirStore
from app.models import AutoReplySent, OutboundMessage, OutboundRecipient
from app.services import selfservice
from app.services.audit import CLI_ACTOR
from app.spool import SpoolStore
from tests.factories import make_alias, make_mailbox
from tests.protocol.outbound_helpers import Clock, make_agent, run_once
from tests.protocol.smtp_helpers import IngressThread

USER = "vac@hosted.example"
ALIAS = "info@hosted.example"


@dataclass(frozen=True)
class Row:
    name: str
    sender: str
    rcpt: str
    headers: str
    replied: bool


def _row(name: str, headers: str, replied: bool, *, sender: str = "", rcpt: str = USER) -> Row:
    return Row(name, sender or f"{name}@origin.example", rcpt, headers, replied)


TO_USER = f"To: {USER}\r\n"
TABLE = [
    _row("plain", TO_USER, True),
    _row("cc", f"To: x@origin.example\r\nCc: Vac <{USER}>\r\n", True),
    _row("alias-in-to", f"To: {ALIAS}\r\n", True, rcpt=ALIAS),
    _row("bcc", "To: x@origin.example\r\n", False),
    _row("null-sender", TO_USER, False, sender="<>"),
    _row("list-id", TO_USER + "List-Id: <news.origin.example>\r\n", False),
    _row("list-unsub", TO_USER + "List-Unsubscribe: <mailto:u@origin.example>\r\n", False),
    _row("prec-bulk", TO_USER + "Precedence: bulk\r\n", False),
    _row("prec-list", TO_USER + "Precedence: list\r\n", False),
    _row("prec-junk", TO_USER + "Precedence: junk\r\n", False),
    _row("auto-generated", TO_USER + "Auto-Submitted: auto-generated\r\n", False),
    _row("auto-replied", TO_USER + "Auto-Submitted: auto-replied\r\n", False),
    _row("auto-no", TO_USER + "Auto-Submitted: no\r\n", True),
    _row("daemon", TO_USER, False, sender="MAILER-DAEMON@origin.example"),
    _row("owner", TO_USER, False, sender="owner-news@origin.example"),
    _row("request", TO_USER, False, sender="news-request@origin.example"),
    _row(
        "report",
        TO_USER + 'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n',
        False,
    ),
    _row("self", TO_USER, False, sender=USER),
]


@pytest.fixture
def settings(settings: Settings, tmp_path: Path) -> Settings:
    """The base settings with the spool in the test's directory (auto-replies are queued)."""
    return settings.model_copy(update={"spool_root": tmp_path / "spool"})


@pytest.fixture
def mx(
    settings: Settings,
    session_factory: sessionmaker[Session],
    smtp_start: Callable[..., IngressThread],
) -> IngressThread:
    with transaction(session_factory) as s:
        box = make_mailbox(s, USER)
        make_mailbox(s, "friend@hosted.example")
        make_alias(s, ALIAS, [USER])
        today = dt.datetime.now(dt.UTC).date()
        selfservice.set_auto_reply(
            s,
            actor=CLI_ACTOR,
            mailbox_id=box.id,
            subject="Out of office",
            body="I am away until Monday.",
            starts_on=today - dt.timedelta(days=1),
            ends_on=today + dt.timedelta(days=1),
        )
        late = make_mailbox(s, "back@hosted.example")
        selfservice.set_auto_reply(
            s,
            actor=CLI_ACTOR,
            mailbox_id=late.id,
            subject="Was away",
            body="Over.",
            starts_on=today - dt.timedelta(days=9),
            ends_on=today - dt.timedelta(days=1),
        )
    return smtp_start(settings)


def _send(mx: IngressThread, sender: str, rcpt: str, headers: str) -> None:
    env_sender = "" if sender == "<>" else sender
    message = f"From: {sender}\r\n{headers}Subject: hi\r\nMessage-ID: <id-{rcpt}>\r\n\r\nhi\r\n"
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as client:
        client.sendmail(env_sender, [rcpt], message)


def _replies(factory: sessionmaker[Session], to: str | None = None) -> list[OutboundMessage]:
    with factory() as s:
        query = (
            select(OutboundMessage)
            .join(OutboundRecipient)
            .where(OutboundMessage.origin == "autoreply")
        )
        if to is not None:
            query = query.where(OutboundRecipient.address == to)
        return list(s.scalars(query))


def test_the_rfc_3834_table(mx: IngressThread, session_factory: sessionmaker[Session]) -> None:
    wrong: list[str] = []
    for row in TABLE:
        before = len(_replies(session_factory))
        _send(mx, row.sender, row.rcpt, row.headers)
        got = len(_replies(session_factory)) - before
        if got != int(row.replied):
            wrong.append(f"{row.name}: expected {int(row.replied)} replies, got {got}")
    assert wrong == []
    assert len(_replies(session_factory)) == sum(r.replied for r in TABLE)


def test_once_per_sender_and_the_reply_itself(
    mx: IngressThread, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    _send(mx, "bob@origin.example", USER, TO_USER)
    _send(mx, "bob@origin.example", USER, TO_USER)
    _send(mx, "BOB@origin.example", USER, TO_USER)  # the same sender in other case
    [reply] = _replies(session_factory)
    assert reply.sender == ""  # RFC 3834 section 3.3: the null return path
    data = SpoolStore(settings.spool_root).read(reply.spool_id)
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["From"] == USER
    assert parsed["To"] == "bob@origin.example"
    assert parsed["Subject"] == "Out of office"
    assert parsed["In-Reply-To"] == f"<id-{USER}>"
    assert "I am away until Monday." in parsed.get_content()


def test_no_reply_outside_the_dates(
    mx: IngressThread, session_factory: sessionmaker[Session]
) -> None:
    _send(mx, "carol@origin.example", "back@hosted.example", "To: back@hosted.example\r\n")
    assert _replies(session_factory) == []


def test_a_hosted_sender_gets_the_reply_in_its_mailbox(
    mx: IngressThread,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    settings: Settings,
) -> None:
    _send(mx, "friend@hosted.example", USER, TO_USER)
    agent = make_agent(
        settings, session_factory, store, Clock(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5))
    )
    assert run_once(agent) == 1
    [info] = store.list_messages(MailboxRef("hosted.example", "friend"))
    with store.open_message(info) as f:
        text = f.read()
    assert b"Return-Path: <>" in text
    assert b"Auto-Submitted: auto-replied" in text


def test_the_same_sender_is_answered_again_once_the_interval_has_passed(
    mx: IngressThread, session_factory: sessionmaker[Session], settings: Settings
) -> None:
    # RFC 3834 section 2: at most once per sender per MAILHOST_AUTOREPLY_INTERVAL_DAYS (7):
    # within it nothing more, past it the next message is answered again.
    _send(mx, "dora@origin.example", USER, TO_USER)
    assert len(_replies(session_factory, "dora@origin.example")) == 1
    days = settings.autoreply_interval_days
    with transaction(session_factory) as s:
        [sent] = s.scalars(
            select(AutoReplySent).where(AutoReplySent.sender == "dora@origin.example")
        )
        sent.sent_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=days) + dt.timedelta(hours=1)
    _send(mx, "dora@origin.example", USER, TO_USER)  # an hour short of the interval: none
    assert len(_replies(session_factory, "dora@origin.example")) == 1
    with transaction(session_factory) as s:
        [sent] = s.scalars(
            select(AutoReplySent).where(AutoReplySent.sender == "dora@origin.example")
        )
        sent.sent_at = dt.datetime.now(dt.UTC) - dt.timedelta(days=days, hours=1)
    _send(mx, "dora@origin.example", USER, TO_USER)
    assert len(_replies(session_factory, "dora@origin.example")) == 2
