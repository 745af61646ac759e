"""The message tracking scenario the tests share: over real SMTP and POP3, one message refused
at RCPT, one accepted for two mailboxes (through an alias and directly), and one retrieved and
deleted by POP3; then wait (with a deadline) until every event is written."""

from __future__ import annotations

import poplib
import smtplib
import time
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.models import MessageEvent
from tests.factories import make_alias, make_mailbox

ALICE = "alice@track.example"
CAROL = "carol@track.example"
INFO = "info@track.example"  # alias of alice
NOBODY = "nobody@track.example"
SENDER = "Bob@Remote.example"
PASSWORD = "alice's secret"
# refused + (received + stored) for INFO and CAROL + retrieved + deleted
EXPECTED_EVENTS = 1 + 4 + 2


@dataclass(frozen=True)
class Outcome:
    refused_queue_id: str
    queue_id: str  # the message for alice (via info@) and carol


def seed(factory: sessionmaker[Session]) -> None:
    with transaction(factory) as s:
        make_mailbox(s, ALICE, password=PASSWORD)
        make_mailbox(s, CAROL)
        make_alias(s, INFO, [ALICE])


def _count(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        return int(s.scalar(select(func.count()).select_from(MessageEvent)) or 0)


def run(factory: sessionmaker[Session], *, smtp_port: int, pop3_port: int) -> Outcome:
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as smtp:
        smtp.ehlo("client.remote.example")
        smtp.mail(SENDER)
        code, text = smtp.rcpt(NOBODY)
        assert code == 550, text
        smtp.rset()
        smtp.mail(SENDER)
        assert smtp.rcpt(INFO)[0] == 250
        assert smtp.rcpt(CAROL)[0] == 250
        code, text = smtp.data(b"From: bob@remote.example\r\nSubject: where is it\r\n\r\nHi\r\n")
        assert code == 250, text
        queue_id = text.decode().rsplit(" ", 1)[-1]
    pop = poplib.POP3("127.0.0.1", pop3_port, timeout=10)
    try:
        pop.user(ALICE)
        pop.pass_(PASSWORD)
        assert len(pop.retr(1)[1]) > 0
        pop.dele(1)
    finally:
        pop.quit()
    deadline = time.monotonic() + 20
    while _count(factory) < EXPECTED_EVENTS:
        assert time.monotonic() < deadline, f"only {_count(factory)} events written"
        time.sleep(0.05)
    with factory() as s:
        refused = s.scalars(select(MessageEvent).where(MessageEvent.kind == "refused")).one()
    assert refused.queue_id is not None
    return Outcome(refused_queue_id=refused.queue_id, queue_id=queue_id)
