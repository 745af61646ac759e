"""Queue rows for hosted addresses are stored in the Maildir directly (never SMTP to ourselves),
resolved exactly as the MX resolves them (``app.services.resolution``)."""

from __future__ import annotations

import datetime as dt
import email.utils

from sqlalchemy.orm import Session

from app.maildir import MaildirError, MaildirStore
from app.services.queue import Claimed, Reply
from app.services.resolution import Verdict, resolve_recipient

# Verdicts that are permanent for a queued message (the ingress would say 550 to them).
_PERMANENT = {
    Verdict.INVALID_ADDRESS: "550 5.1.3 invalid recipient address",
    Verdict.UNKNOWN_USER: "550 5.1.1 no such mailbox here",
    Verdict.SUSPENDED: "550 5.2.1 mailbox disabled",
    Verdict.NO_POSTMASTER: "550 5.1.1 no postmaster mailbox is configured",
}


def is_hosted(session: Session, address: str) -> bool:
    return resolve_recipient(session, address=address).verdict is not Verdict.UNKNOWN_DOMAIN


def deliver_local(
    session: Session,
    *,
    store: MaildirStore,
    hostname: str,
    item: Claimed,
    data: bytes,
    now: dt.datetime,
    postmaster_address: str | None,
) -> tuple[str, Reply]:
    """Store ``data`` for ``item``'s recipient; returns ('delivered'|'deferred'|'failed', reply)."""
    where = f"{hostname} (local)"
    result = resolve_recipient(
        session, address=item.address, store=store, postmaster_address=postmaster_address
    )
    if result.verdict is Verdict.OVER_QUOTA:
        return "deferred", Reply(452, "4.2.2 mailbox full", where)
    if not result.ok:
        code, _, text = _PERMANENT.get(result.verdict, "550 5.1.1 not deliverable").partition(" ")
        return "failed", Reply(int(code), text, where)
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
        store.deliver(copies)
    except (MaildirError, OSError) as exc:
        return "deferred", Reply(451, f"4.3.0 local delivery failed: {exc}", where)
    return "delivered", Reply(250, f"2.0.0 delivered to {len(copies)} mailbox(es)", where)
