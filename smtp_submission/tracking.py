"""The message events of submission (what app.tracking records): a transaction's, and the
refusals its protocol layer makes itself (app/protocol_refusals.py counts and records them)."""

from __future__ import annotations

from typing import Protocol

from aiosmtpd.smtp import Session as SmtpSession

from app.protocol_refusals import Refusal
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


def _login_name(tried: str | None) -> str | None:
    """The login name a failed AUTH tried, when it has the form of an address (a search by
    that address then shows why the user cannot send); anything else (a password typed in
    the wrong field, say) is not recorded."""
    if tried is None or len(tried) > 320 or tried.count("@") != 1:
        return None
    return tried if tried.isprintable() and " " not in tried else None


def protocol_refusal(
    session: SmtpSession | None,
    envelope: SubmissionEnvelope | None,
    *,
    stage: str,
    reply: str,
    client_ip: str,
    login_tried: str | None = None,
) -> Refusal:
    """What a refusal of submission's protocol layer records: the transaction's queue id and
    sender while one is open, who is logged in (or, at AUTH, the address tried)."""
    queue_id = envelope.queue_id if envelope is not None and envelope.queue_id else None
    user = _user(session) if session is not None else None
    return Refusal(
        stage=stage,
        reply=reply,
        client_ip=client_ip,
        helo=session.host_name if session is not None else None,
        queue_id=queue_id,
        sender=envelope.mail_from if envelope is not None and queue_id else None,
        mailbox=user or (_login_name(login_tried) if stage == "AUTH" else None),
    )
