"""A mailbox's forwarding and auto-reply, for operators' tools (the user sets them at /me).

Scopes: ``read`` for GET, ``provisioning`` for PUT and DELETE. GET of a mailbox without one
answers 200 with ``configured: false`` (404 means the mailbox does not exist).
"""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr
from sqlalchemy.orm import Session

from app.db import transaction
from app.services import selfservice
from app.services.audit import Actor
from web.api.auth import CustomerProvisioner, CustomerReader
from web.api.problems import ProblemRoute, problem_responses
from web.deps import FactoryDep
from web.params import Id

READ_ERRORS = problem_responses(401, 403, 404, 422, 503)
WRITE_ERRORS = problem_responses(400, 401, 403, 404, 422, 503)

router = APIRouter(route_class=ProblemRoute, tags=["mailboxes"])


class ForwardingPublic(BaseModel):
    mailbox_id: int
    configured: bool
    forward_to: str | None = None
    keep_copy: bool | None = None
    hosted: bool | None = Field(
        default=None, description="Hosted here (delivered locally) or remote (sent with SRS)."
    )


class ForwardingUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    forward_to: StrictStr = Field(max_length=320)
    keep_copy: StrictBool = True


class AutoReplyPublic(BaseModel):
    mailbox_id: int
    configured: bool
    enabled: bool | None = None
    subject: str | None = None
    body: str | None = None
    starts_on: dt.date | None = None
    ends_on: dt.date | None = None


class AutoReplyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: StrictStr = Field(max_length=selfservice.MAX_SUBJECT)
    body: StrictStr = Field(max_length=selfservice.MAX_BODY)
    starts_on: dt.date | None = Field(default=None, description="First day (UTC); null: now.")
    ends_on: dt.date | None = Field(default=None, description="Last day (UTC); null: open end.")
    enabled: StrictBool = True


def _forwarding(s: Session, mailbox_id: int, actor: Actor) -> ForwardingPublic:
    view = selfservice.get_forward(s, mailbox_id=mailbox_id, actor=actor)
    if view is None:
        return ForwardingPublic(mailbox_id=mailbox_id, configured=False)
    return ForwardingPublic(
        mailbox_id=mailbox_id,
        configured=True,
        forward_to=view.address,
        keep_copy=view.keep_copy,
        hosted=view.hosted,
    )


def _auto_reply(s: Session, mailbox_id: int, actor: Actor) -> AutoReplyPublic:
    view = selfservice.get_auto_reply(s, mailbox_id=mailbox_id, actor=actor)
    if view is None:
        return AutoReplyPublic(mailbox_id=mailbox_id, configured=False)
    return AutoReplyPublic(
        mailbox_id=mailbox_id,
        configured=True,
        enabled=view.enabled,
        subject=view.subject,
        body=view.body,
        starts_on=view.starts_on,
        ends_on=view.ends_on,
    )


@router.get(
    "/mailboxes/{mailbox_id}/forwarding", response_model=ForwardingPublic, responses=READ_ERRORS
)
def get_forwarding(
    mailbox_id: Id, principal: CustomerReader, factory: FactoryDep
) -> ForwardingPublic:
    with transaction(factory) as s:
        return _forwarding(s, mailbox_id, principal.actor)


@router.put(
    "/mailboxes/{mailbox_id}/forwarding", response_model=ForwardingPublic, responses=WRITE_ERRORS
)
def put_forwarding(
    mailbox_id: Id, body: ForwardingUpdate, principal: CustomerProvisioner, factory: FactoryDep
) -> ForwardingPublic:
    with transaction(factory) as s:
        selfservice.set_forward(
            s,
            actor=principal.actor,
            mailbox_id=mailbox_id,
            address=body.forward_to,
            keep_copy=body.keep_copy,
        )
        return _forwarding(s, mailbox_id, principal.actor)


@router.delete("/mailboxes/{mailbox_id}/forwarding", status_code=204, responses=WRITE_ERRORS)
def delete_forwarding(
    mailbox_id: Id, principal: CustomerProvisioner, factory: FactoryDep
) -> Response:
    with transaction(factory) as s:
        selfservice.clear_forward(s, actor=principal.actor, mailbox_id=mailbox_id)
    return Response(status_code=204)


@router.get(
    "/mailboxes/{mailbox_id}/auto-reply", response_model=AutoReplyPublic, responses=READ_ERRORS
)
def get_auto_reply(
    mailbox_id: Id, principal: CustomerReader, factory: FactoryDep
) -> AutoReplyPublic:
    with transaction(factory) as s:
        return _auto_reply(s, mailbox_id, principal.actor)


@router.put(
    "/mailboxes/{mailbox_id}/auto-reply", response_model=AutoReplyPublic, responses=WRITE_ERRORS
)
def put_auto_reply(
    mailbox_id: Id, body: AutoReplyUpdate, principal: CustomerProvisioner, factory: FactoryDep
) -> AutoReplyPublic:
    with transaction(factory) as s:
        selfservice.set_auto_reply(
            s,
            actor=principal.actor,
            mailbox_id=mailbox_id,
            subject=body.subject,
            body=body.body,
            starts_on=body.starts_on,
            ends_on=body.ends_on,
            enabled=body.enabled,
        )
        return _auto_reply(s, mailbox_id, principal.actor)


@router.delete("/mailboxes/{mailbox_id}/auto-reply", status_code=204, responses=WRITE_ERRORS)
def delete_auto_reply(
    mailbox_id: Id, principal: CustomerProvisioner, factory: FactoryDep
) -> Response:
    with transaction(factory) as s:
        selfservice.clear_auto_reply(s, actor=principal.actor, mailbox_id=mailbox_id)
    return Response(status_code=204)
