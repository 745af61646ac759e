"""Message tracking for API clients: ``GET /messages``, the events of the messages matching a
search, in time order, cursor-paged (``read`` scope)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.models import MessageEvent
from app.services import tracking
from web.api.auth import Reader
from web.api.common import DEFAULT_LIMIT, Cursor, Limit, Page, api_fields
from web.api.problems import ProblemRoute
from web.api.routes.common import READ_ERRORS
from web.deps import FactoryDep

router = APIRouter(prefix="/messages", tags=["messages"], route_class=ProblemRoute)


class MessageEventPublic(BaseModel):
    id: int
    occurred_at: dt.datetime
    kind: str = Field(description="received, refused, stored, submitted, queued, attempt, "
                      "delivered, deferred, bounced, retrieved or deleted.")  # fmt: skip
    service: str = Field(description="mx, submission, outbound or pop3.")
    queue_id: str | None
    client_ip: str | None
    helo: str | None
    sender: str | None = Field(description='Envelope sender ("" is the null sender <>).')
    recipient: str | None
    mailbox: str | None = Field(description="The mailbox stored into, fetched from or sending.")
    remote_host: str | None
    stage: str | None = Field(description="The command the reply answered (RCPT, DATA, RETR...).")
    reply: str | None = Field(description="The reply the other side saw.")
    detail: str | None

    @classmethod
    def of(cls, e: MessageEvent) -> MessageEventPublic:
        return cls(
            id=e.id,
            occurred_at=e.occurred_at,
            kind=e.kind,
            service=e.service,
            queue_id=e.queue_id,
            client_ip=e.client_ip,
            helo=e.helo,
            sender=e.sender,
            recipient=e.recipient,
            mailbox=e.mailbox,
            remote_host=e.remote_host,
            stage=e.stage,
            reply=e.reply,
            detail=e.detail,
        )


@router.get("", response_model=Page[MessageEventPublic], responses=READ_ERRORS)
def list_message_events(
    _: Reader,
    factory: FactoryDep,
    address: Annotated[
        str | None,
        Query(max_length=320, description="Sender or recipient (alias or mailbox), any case."),
    ] = None,
    queue_id: Annotated[str | None, Query(max_length=32, description="A queue id.")] = None,
    client_ip: Annotated[
        str | None, Query(max_length=45, description="The client's IP address (SMTP or POP3).")
    ] = None,
    since: Annotated[
        dt.datetime | None, Query(description="Events at or after (ISO 8601; no zone = UTC).")
    ] = None,
    until: Annotated[dt.datetime | None, Query(description="Events at or before.")] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[MessageEventPublic]:
    """Every event of the messages that match, oldest first; no criteria: all events."""
    with api_fields(), factory() as session:
        query = tracking.normalise_query(
            address=address, queue_id=queue_id, client_ip=client_ip, since=since, until=until
        )
        rows, next_cursor = tracking.search_page(session, query=query, cursor=cursor, limit=limit)
        return Page[MessageEventPublic](
            items=[MessageEventPublic.of(e) for e in rows], next_cursor=next_cursor
        )
