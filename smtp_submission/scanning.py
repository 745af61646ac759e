"""Outbound scanning at submission: spam or a virus from a (compromised) account is refused
and the mailbox flagged, never relayed. A scanner that is down gives 451 (the user's client
retries), unless the operator accepts unscanned mail."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from app.scanning.clients import ScanEnvelope
from app.scanning.decision import Action, ScanPolicy
from app.scanning.scanner import Scanner

log = logging.getLogger("smtp_submission")


async def outbound_scan(
    scanner: Scanner,
    content: bytes,
    *,
    identity_address: str,
    client_ip: str,
    helo: str | None,
    sender: str | None,
    recipients: tuple[str, ...],
    queue_id: str,
    policy: ScanPolicy,
    flag: Callable[[str], Awaitable[None]],
) -> str | None:
    """The refusal, or None to go on. rspamd is told the authenticated user (its ``User``
    header), which its modules treat as outbound mail."""
    envelope = ScanEnvelope(
        client_ip=client_ip,
        helo=helo,
        sender=sender or "",
        recipients=recipients,
        queue_id=queue_id,
        user=identity_address,
    )
    decision = await scanner.scan(content.replace(b"\r\n", b"\n"), envelope, policy)
    log.info("qid=%s user=%s outbound %s", queue_id, identity_address, decision.log_fields())
    if decision.action in (Action.REJECT, Action.VIRUS):
        await flag(decision.reason)
        if decision.action is Action.VIRUS:
            return f"554 5.7.1 Message refused: {decision.reason}; the account is flagged"
        return f"550 5.7.1 Message refused as spam ({decision.reason}); the account is flagged"
    if decision.action is Action.TEMPFAIL:
        return f"451 4.7.1 Message not accepted now ({decision.reason}), try again later"
    return None
