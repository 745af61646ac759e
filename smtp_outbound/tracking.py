"""The message events of a delivery round (what app.tracking records for it)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from app.services.queue import Claimed, Notice, Reply
from app.tracking import Event

# The agent's result kinds and the event each ends in.
_OUTCOME = {"delivered": "delivered", "deferred": "deferred", "failed": "bounced"}


class ResultLike(Protocol):
    @property
    def item(self) -> Claimed: ...

    @property
    def kind(self) -> str: ...

    @property
    def reply(self) -> Reply: ...


def _reply(reply: Reply | None) -> str | None:
    return f"{reply.code} {reply.text}" if reply is not None else None


def round_events(
    results: Iterable[ResultLike], notices: Sequence[Notice], bounces: dict[str, str]
) -> list[Event]:
    """Each attempt (the host and its reply) and where it left the recipient; a recipient
    that expired while deferred is bounced too; ``bounces``: queue id -> its DSN's queue id."""
    events: list[Event] = []
    failed = set()
    for r in results:
        common = {
            "service": "outbound",
            "queue_id": r.item.queue_id,
            "sender": r.item.sender,
            "recipient": r.item.address,
            "remote_host": r.reply.host,
            "reply": _reply(r.reply),
        }
        detail = f"attempt {r.item.attempts + 1}" + (f"; TLS {r.reply.tls}" if r.reply.tls else "")
        events.append(Event(kind="attempt", detail=detail, **common))  # type: ignore[arg-type]
        events.append(Event(kind=_OUTCOME.get(r.kind, r.kind), **common))  # type: ignore[arg-type]
        if r.kind == "failed":
            failed.add((r.item.queue_id, r.item.address))
    for n in notices:
        if n.action == "failed" and (n.queue_id, n.address) not in failed:
            events.append(
                Event(
                    kind="bounced",
                    service="outbound",
                    queue_id=n.queue_id,
                    sender=n.sender,
                    recipient=n.address,
                    remote_host=n.reply.host if n.reply else None,
                    reply=_reply(n.reply),
                    detail=f"gave up ({n.status})",
                )
            )
    for n in notices:
        dsn = bounces.get(n.queue_id)
        if dsn is not None:
            events.append(
                Event(
                    kind="queued",
                    service="outbound",
                    queue_id=n.queue_id,
                    sender=n.sender,
                    recipient=n.address,
                    detail=f"{n.action} notification to <{n.sender}> queued as {dsn}",
                )
            )
            events.append(
                Event(
                    kind="queued",
                    service="outbound",
                    queue_id=dsn,
                    sender="",
                    recipient=n.sender,
                    detail=f"{n.action} notification about {n.queue_id}",
                )
            )
    return events
