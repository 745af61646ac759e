"""The message events of a submission transaction (what app.tracking records for it)."""

from __future__ import annotations

from typing import Protocol

from aiosmtpd.smtp import Session as SmtpSession

from app.services.resolution import Target
from app.tracking import Event


class SubmissionEnvelope(Protocol):
    """What the events need of the handler's envelope."""

    queue_id: str
    mail_from: str | None
    rcpt_tos: list[str]
    local: dict[int, tuple[Target, str]]
    remote: list[str]


def _peer_ip(session: SmtpSession) -> str:
    peer = getattr(session, "peer", None)
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


def _user(session: SmtpSession) -> str | None:
    data = getattr(session, "auth_data", None)
    address = getattr(data, "address", None)
    return address if isinstance(address, str) else None


def refusal(
    session: SmtpSession,
    envelope: SubmissionEnvelope,
    *,
    stage: str,
    reply: str,
    sender: str | None = None,
    recipient: str | None = None,
) -> list[Event]:
    """The event of a refused MAIL, RCPT or DATA (none for a 2xx reply)."""
    if reply.startswith("2"):
        return []
    return [
        Event(
            kind="refused",
            service="submission",
            queue_id=envelope.queue_id or None,
            client_ip=_peer_ip(session),
            helo=session.host_name,
            sender=sender if sender is not None else envelope.mail_from,
            recipient=recipient,
            mailbox=_user(session),
            stage=stage,
            reply=reply,
        )
    ]


def accepted(
    session: SmtpSession, envelope: SubmissionEnvelope, *, reply: str, stored_keys: list[str]
) -> list[Event]:
    """Submitted, each local copy stored (with its Maildir name), each remote one queued."""
    if not reply.startswith("2"):
        return refusal(session, envelope, stage="DATA", reply=reply)
    common = {
        "service": "submission",
        "queue_id": envelope.queue_id,
        "client_ip": _peer_ip(session),
        "helo": session.host_name,
        "sender": envelope.mail_from,
    }
    user = _user(session)
    events = [
        Event(
            kind="submitted",
            mailbox=user,
            stage="DATA",
            reply=reply,
            detail=f"authenticated as {user}; {len(envelope.rcpt_tos)} recipient(s)",
            **common,  # type: ignore[arg-type]
        )
    ]
    keys = stored_keys + [None] * (len(envelope.local) - len(stored_keys))
    for (target, rcpt), key in zip(envelope.local.values(), keys, strict=True):
        events.append(
            Event(
                kind="stored",
                recipient=rcpt,
                mailbox=target.address,
                message_key=key,
                reply=reply,
                **common,  # type: ignore[arg-type]
            )
        )
    for rcpt in envelope.remote:
        events.append(Event(kind="queued", recipient=rcpt, reply=reply, **common))  # type: ignore[arg-type]
    return events
