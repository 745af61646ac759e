"""Real outbound queue rows for the web tests: a spooled file, enqueue, and a real deferral
(claim + record) so recipients carry a remote reply, all through the queue service."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.models import AuditEntry, OutboundMessage, utcnow
from app.services import queue
from app.spool import SpoolStore

MESSAGE = b"From: alice@hosted.example\r\nTo: bob@remote.example\r\nSubject: q\r\n\r\nHi.\r\n"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The conftest settings with the spool beside the test's Maildir root."""
    return settings.model_copy(update={"spool_root": settings.maildir_root.parent / "spool"})


def spool_of(settings: Settings) -> SpoolStore:
    return SpoolStore(settings.spool_root)


def queue_message(
    settings: Settings,
    factory: sessionmaker[Session],
    recipients: list[str],
    *,
    sender: str = "alice@hosted.example",
    age: float = 0.0,
) -> tuple[str, str]:
    """Spool and enqueue a message created ``age`` seconds ago: (queue id, spool id)."""
    file = spool_of(settings).write([MESSAGE])
    with transaction(factory) as s:
        message = queue.enqueue(
            s,
            spool_id=file.spool_id,
            size=file.size,
            sender=sender,
            recipients=recipients,
            origin="submission",
            now=utcnow() - dt.timedelta(seconds=age),
        )
        return message.queue_id, file.spool_id


def defer_all(
    factory: sessionmaker[Session], *, code: int = 451, text: str = "4.7.1 try later"
) -> int:
    """One real failed attempt for every due row, as a delivery worker records it."""
    now = utcnow()
    with transaction(factory) as s:
        claimed = queue.claim_due(s, worker="test-worker", now=now, limit=1000, lease=60)
        queue.record_deferred(
            s,
            recipient_ids=[c.recipient_id for c in claimed],
            worker="test-worker",
            now=now,
            reply=queue.Reply(code, text, host="mx1.remote.example"),
            schedule=queue.RetrySchedule(),
        )
    return len(claimed)


def audit_actions(factory: sessionmaker[Session], queue_id: str) -> list[tuple[str, str]]:
    """(action, actor) of the audit rows about this queue id, oldest first."""
    with factory() as s:
        return [
            (e.action, e.actor)
            for e in s.scalars(
                select(AuditEntry)
                .where(AuditEntry.object_type == "queue", AuditEntry.object_id == queue_id)
                .order_by(AuditEntry.id)
            )
        ]


def message_exists(factory: sessionmaker[Session], queue_id: str) -> bool:
    with factory() as s:
        return (
            s.scalar(select(OutboundMessage.id).where(OutboundMessage.queue_id == queue_id))
            is not None
        )
