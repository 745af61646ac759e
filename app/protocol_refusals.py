"""Refusals an SMTP protocol layer makes itself (the MX's and submission's): their stage, the
counter and the ``refused`` tracking event, in one place for both edges. Memory only: a
counter and an append to the tracking buffer, no database round trip, so a flood of bad
commands costs what the buffer holds and the excess is dropped and counted like any event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app import metrics
from app.tracking import Event, EventWriter

# Replies aiosmtpd makes before it looks the command up (an empty or undecodable line, a line
# too long): the verb is unknown then, so the stage is "COMMAND". Matched on the text aiosmtpd
# pushed, before an edge adds its enhanced status code.
BEFORE_DISPATCH = frozenset(
    {
        "500 Error: bad syntax",
        "500 Command line too long",
        "500 Error: strict ASCII mode",
    }
)


def stage_of(stage: str, original: str | None) -> str:
    """The stage to record: ``COMMAND`` for a line that was never read as a command, else
    the command being answered (a known verb, ``UNKNOWN`` or ``CONNECT``: bounded, it is a
    metrics label too)."""
    return "COMMAND" if original in BEFORE_DISPATCH else stage


@dataclass(frozen=True, slots=True)
class Refusal:
    """One protocol-layer refusal as the edge saw it (no body, no password)."""

    stage: str
    reply: str
    client_ip: str
    helo: str | None = None
    queue_id: str | None = None  # the transaction's, when one is open (or just ended)
    sender: str | None = None
    mailbox: str | None = None  # submission: who is logged in, or the login name tried


def record(
    tracking: EventWriter,
    refusal: Refusal,
    *,
    service: str,
    metrics_service: str,
    session_id: str | None,
    new_id: Callable[[], str],
) -> str | None:
    """Count ``refusal`` by stage and reply class and record it as a ``refused`` event under
    the transaction's queue id or, outside a transaction, the session's id (``S`` + a queue
    id from ``new_id``, made on the session's first refusal). Returns the session id to keep
    for the session's next refusals (None while tracking is off)."""
    metrics.protocol_refused(metrics_service, refusal.stage.lower(), refusal.reply)
    if not tracking.enabled:
        return session_id
    if session_id is None:
        session_id = "S" + new_id()
    tracking.record(
        Event(
            kind="refused",
            service=service,
            queue_id=refusal.queue_id or session_id,
            client_ip=refusal.client_ip,
            helo=refusal.helo,
            sender=refusal.sender,
            mailbox=refusal.mailbox,
            stage=refusal.stage,
            reply=refusal.reply,
            detail=f"protocol; session {session_id}",
        )
    )
    return session_id
