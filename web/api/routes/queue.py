"""The outbound queue for operators: list (filters, cursor paging), show, retry, hold,
release, delete. Every route needs the ``queue`` scope (reads too: a queue lists senders and
recipients of every customer); every change is audited by the service with the token as actor.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from app.db import transaction
from app.models import OutboundMessage, utcnow
from app.services import queue_admin
from app.services.queue_admin import QueueSummary
from app.spool import SpoolStore
from web.api.auth import QueueOperator
from web.api.common import DEFAULT_LIMIT, Cursor, IdempotencyKey, Limit, Page, api_fields, run_post
from web.api.problems import ProblemRoute
from web.api.routes.common import READ_ERRORS, WRITE_ERRORS, no_content, ok, page_of, read_one
from web.deps import FactoryDep, SettingsDep

router = APIRouter(prefix="/queue", tags=["queue"], route_class=ProblemRoute)

RecipientState = Literal["queued", "deferred", "held", "delivered", "bounced", "expired"]
QueueId = Annotated[
    str, Path(min_length=1, max_length=32, pattern=r"^[0-9A-Fa-f]+$", description="Queue id.")
]


class QueueRecipientPublic(BaseModel):
    address: str
    state: RecipientState
    attempts: int
    next_attempt_at: dt.datetime | None = Field(
        description="When a worker tries next (null unless queued or deferred)."
    )
    last_attempt_at: dt.datetime | None
    last_reply_code: int | None = Field(description="The last remote (or local) reply code.")
    last_reply_text: str | None
    last_reply_host: str | None = Field(description="The host that gave the last reply.")
    tls: str | None = Field(description="How the last SMTP session was protected.")
    leased_by: str | None = Field(description="The worker delivering it right now, if any.")


class QueueMessagePublic(BaseModel):
    queue_id: str
    sender: str = Field(description='The envelope sender; "" is the null sender <> (a bounce).')
    size: int
    origin: str
    customer_id: int | None
    created_at: dt.datetime
    recipients: list[QueueRecipientPublic]

    @classmethod
    def of(cls, m: OutboundMessage) -> QueueMessagePublic:
        return cls(
            queue_id=m.queue_id,
            sender=m.sender,
            size=m.size,
            origin=m.origin,
            customer_id=m.customer_id,
            created_at=m.created_at,
            recipients=[
                QueueRecipientPublic(
                    address=r.address,
                    state=r.state,  # one of the CHECK constraint's values
                    attempts=r.attempts,
                    next_attempt_at=r.next_attempt_at
                    if r.state in ("queued", "deferred")
                    else None,
                    last_attempt_at=r.last_attempt_at,
                    last_reply_code=r.last_reply_code,
                    last_reply_text=r.last_reply_text,
                    last_reply_host=r.last_reply_host,
                    tls=r.last_tls,
                    leased_by=r.lease_owner,
                )
                for r in m.recipients
            ],
        )


class QueueSummaryPublic(BaseModel):
    queue_id: str
    sender: str
    size: int
    origin: str
    customer_id: int | None
    created_at: dt.datetime
    states: dict[str, int] = Field(description="How many recipients are in each state.")
    next_attempt_at: dt.datetime | None

    @classmethod
    def of(cls, q: QueueSummary) -> QueueSummaryPublic:
        m = q.message
        return cls(
            queue_id=m.queue_id,
            sender=m.sender,
            size=m.size,
            origin=m.origin,
            customer_id=m.customer_id,
            created_at=m.created_at,
            states=q.states,
            next_attempt_at=q.next_attempt_at,
        )


@router.get("", response_model=Page[QueueSummaryPublic], responses=READ_ERRORS)
def list_queue(
    principal: QueueOperator,
    factory: FactoryDep,
    state: Annotated[
        RecipientState | None,
        Query(description="Messages with a recipient in this state (default: not yet final)."),
    ] = None,
    domain: Annotated[
        str | None, Query(max_length=253, description="A recipient's domain (the destination).")
    ] = None,
    sender: Annotated[
        str | None,
        Query(max_length=320, description='Part of the envelope sender; "<>" for bounces.'),
    ] = None,
    min_age: Annotated[
        int | None, Query(ge=0, le=10 * 365 * 86400, description="Queued at least this many s ago.")
    ] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[QueueSummaryPublic]:
    """Messages in queue order; without ``state``, those with something still to do."""
    older_than = None if min_age is None else utcnow() - dt.timedelta(seconds=min_age)
    return page_of(
        factory,
        cursor,
        limit,
        lambda s, after, n: queue_admin.list_queue(
            s,
            actor=principal.actor,
            state=state,
            domain=domain,
            sender=sender,
            older_than=older_than,
            after_id=after,
            limit=n,
        ),
        QueueSummaryPublic.of,
    )


@router.get("/{queue_id}", response_model=QueueMessagePublic, responses=READ_ERRORS)
def get_queued(queue_id: QueueId, _: QueueOperator, factory: FactoryDep) -> BaseModel:
    return read_one(
        factory, lambda s: QueueMessagePublic.of(queue_admin.get_message(s, queue_id=queue_id))
    )


def _action_route(name: str, summary: str) -> None:
    @router.post(
        f"/{{queue_id}}/{name}",
        response_model=QueueMessagePublic,
        responses=WRITE_ERRORS,
        name=f"{name}_queued",
        summary=summary,
    )
    def act(
        queue_id: QueueId,
        request: Request,
        principal: QueueOperator,
        factory: FactoryDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        def run(s: Session) -> tuple[int, BaseModel, dict[str, str]]:
            with api_fields():
                if name == "retry":
                    m = queue_admin.retry_message(
                        s, actor=principal.actor, queue_id=queue_id, now=utcnow()
                    )
                elif name == "hold":
                    m = queue_admin.hold_message(s, actor=principal.actor, queue_id=queue_id)
                else:
                    m = queue_admin.release_message(
                        s, actor=principal.actor, queue_id=queue_id, now=utcnow()
                    )
            return ok(QueueMessagePublic.of(m))

        return run_post(request, factory, principal, idempotency_key, None, run)


_action_route("retry", "Make queued and deferred recipients due now (409 if there are none)")
_action_route("hold", "Hold queued and deferred recipients until released (409 if none)")
_action_route("release", "Release held recipients: due now (409 if none is held)")


@router.delete("/{queue_id}", status_code=204, responses=WRITE_ERRORS)
def delete_queued(
    queue_id: QueueId, principal: QueueOperator, factory: FactoryDep, settings: SettingsDep
) -> Response:
    """Deletes the message and its recipient rows; nobody is told (no bounce)."""
    with transaction(factory) as s:
        spool_id = queue_admin.delete_message(s, actor=principal.actor, queue_id=queue_id)
    # After the commit; a file left by a failure here is removed by the orphan cleaner.
    SpoolStore(settings.spool_root).remove(spool_id)
    return no_content()
