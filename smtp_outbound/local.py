"""Queue rows for hosted addresses are stored in the Maildir directly (never SMTP to ourselves),
resolved exactly as the MX resolves them (``app.services.resolution``); like every delivery
into Maildirs, each stored copy is then checked against its mailbox's quota warnings
(``app.quota_warnings``) and reported as a ``stored`` tracking event (the agent records it)."""

from __future__ import annotations

import datetime as dt
import email.utils
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from app import quota_warnings
from app.config import Settings
from app.maildir import MaildirError, MaildirStore
from app.services.queue import Claimed, Reply
from app.services.resolution import Verdict, resolve_recipient
from app.tracking import Event

# Verdicts that are permanent for a queued message (the ingress would say 550 to them).
_PERMANENT = {
    Verdict.INVALID_ADDRESS: "550 5.1.3 invalid recipient address",
    Verdict.UNKNOWN_USER: "550 5.1.1 no such mailbox here",
    Verdict.SUSPENDED: "550 5.2.1 mailbox disabled",
    Verdict.NO_POSTMASTER: "550 5.1.1 no postmaster mailbox is configured",
}


def is_hosted(session: Session, address: str) -> bool:
    return resolve_recipient(session, address=address).verdict is not Verdict.UNKNOWN_DOMAIN


@dataclass(frozen=True, slots=True)
class LocalOutcome:
    """What ``deliver_local`` did: ('delivered'|'deferred'|'failed', the reply) and, when
    delivered, the ``stored`` event of each copy (mailbox, Maildir name)."""

    kind: str
    reply: Reply
    stored: list[Event] = field(default_factory=list)


def deliver_local(
    session: Session,
    *,
    store: MaildirStore,
    settings: Settings,
    item: Claimed,
    data: bytes,
    now: dt.datetime,
) -> LocalOutcome:
    """Store ``data`` for ``item``'s recipient, then check the receivers' quota warnings."""
    hostname = settings.hostname
    postmaster_address = settings.postmaster_address
    where = f"{hostname} (local)"
    result = resolve_recipient(
        session, address=item.address, store=store, postmaster_address=postmaster_address
    )
    if result.verdict is Verdict.OVER_QUOTA:
        return LocalOutcome("deferred", Reply(452, "4.2.2 mailbox full", where))
    if not result.ok:
        code, _, text = _PERMANENT.get(result.verdict, "550 5.1.1 not deliverable").partition(" ")
        return LocalOutcome("failed", Reply(int(code), text, where))
    # Maildir holds LF line endings; the spool holds what was submitted (CRLF on the wire).
    content = data.replace(b"\r\n", b"\n")
    copies = []
    for target in result.targets:
        trace = (
            f"Return-Path: <{item.sender}>\n"
            f"Delivered-To: {target.address}\n"
            f"Received: by {hostname} (Mailhost) with local id {item.queue_id}\n"
            f"\tfor <{item.address}>; {email.utils.format_datetime(now)}\n"
        ).encode()
        copies.append((target.ref, [trace, content]))
    try:
        infos = store.deliver(copies)
    except (MaildirError, OSError) as exc:
        return LocalOutcome("deferred", Reply(451, f"4.3.0 local delivery failed: {exc}", where))
    reply = Reply(250, f"2.0.0 delivered to {len(copies)} mailbox(es)", where)
    # A bounce, forward or auto-reply filling a mailbox warns like mail from the MX does.
    quota_warnings.after_delivery(
        store,
        settings,
        (quota_warnings.Receiver(t.ref, t.address, t.quota_bytes) for t in result.targets),
    )
    stored = [
        Event(
            kind="stored",
            service="outbound",
            queue_id=item.queue_id,
            sender=item.sender,
            recipient=item.address,
            mailbox=target.address,
            remote_host=where,
            reply=f"{reply.code} {reply.text}",
            detail=f"{item.origin}; size={info.size}",
            message_key=info.uid,
        )
        for target, info in zip(result.targets, infos, strict=True)
    ]
    return LocalOutcome("delivered", reply, stored)
