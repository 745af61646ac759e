"""Sending controls of mailboxes and customers: may_send, limits, usage, the limited flag.

Scopes: ``read`` for GET, ``provisioning`` for PATCH. In a PATCH body a limit that is absent
stays as it is, ``null`` clears it (the platform default applies again), a number sets it.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import transaction
from app.models import utcnow
from app.services import sending_admin as admin
from app.services.sending import SendingLimits
from app.services.sending_admin import MAX_LIMIT, UNSET, LimitChange, Usage
from web.api.auth import Provisioner, Reader
from web.api.problems import ProblemRoute, problem_responses
from web.deps import FactoryDep, SettingsDep
from web.params import Id

# A JSON integer only (``true`` and ``1.5`` are refused, as elsewhere in the API).
Limit = Annotated[StrictInt, Field(ge=1, le=MAX_LIMIT)]

READ_ERRORS = problem_responses(401, 403, 404, 422, 503)
WRITE_ERRORS = problem_responses(400, 401, 403, 404, 422, 503)

router = APIRouter(route_class=ProblemRoute, tags=["sending"])


class UsagePublic(BaseModel):
    limit: int = Field(description="The limit that applies (own, or the platform default).")
    own_limit: int | None = Field(description="null: the platform default applies.")
    used: int = Field(description="Sent in the current window (UTC hour or UTC day).")

    @classmethod
    def of(cls, usage: Usage) -> UsagePublic:
        return cls(limit=usage.limit, own_limit=usage.own, used=usage.used)


class MailboxSendingPublic(BaseModel):
    mailbox_id: int
    may_send: bool
    messages_per_hour: UsagePublic
    recipients_per_day: UsagePublic
    sending_limited: bool = Field(description="A limit refused a message; until the window ends.")
    limited_since: dt.datetime | None
    limited_until: dt.datetime | None
    limited_reason: str | None


class MailboxSendingUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    may_send: bool | None = None
    max_messages_per_hour: Limit | None = None
    max_recipients_per_day: Limit | None = None
    clear_flag: bool = Field(default=False, description="Lower the sending-limited flag now.")


class CustomerSendingPublic(BaseModel):
    customer_id: int
    messages_per_hour: UsagePublic
    recipients_per_day: UsagePublic


class CustomerSendingUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    max_messages_per_hour: Limit | None = None
    max_recipients_per_day: Limit | None = None


def _given(body: BaseModel, name: str) -> LimitChange:
    value = getattr(body, name)
    if name not in body.model_fields_set:
        return UNSET
    assert value is None or isinstance(value, int)
    return value


def _mailbox(s: Session, mailbox_id: int, settings: Settings) -> MailboxSendingPublic:
    status = admin.mailbox_sending_status(
        s,
        mailbox_id=mailbox_id,
        now=utcnow(),
        limits=SendingLimits.from_settings(settings),
    )
    limited = status.limited
    return MailboxSendingPublic(
        mailbox_id=mailbox_id,
        may_send=status.may_send,
        messages_per_hour=UsagePublic.of(status.messages_per_hour),
        recipients_per_day=UsagePublic.of(status.recipients_per_day),
        sending_limited=limited,
        limited_since=status.limited_since if limited else None,
        limited_until=status.limited_until if limited else None,
        limited_reason=status.limited_reason if limited else None,
    )


@router.get(
    "/mailboxes/{mailbox_id}/sending", response_model=MailboxSendingPublic, responses=READ_ERRORS
)
def get_mailbox_sending(
    mailbox_id: Id, _: Reader, factory: FactoryDep, settings: SettingsDep
) -> MailboxSendingPublic:
    with transaction(factory) as s:
        return _mailbox(s, mailbox_id, settings)


@router.patch(
    "/mailboxes/{mailbox_id}/sending", response_model=MailboxSendingPublic, responses=WRITE_ERRORS
)
def update_mailbox_sending(
    mailbox_id: Id,
    body: MailboxSendingUpdate,
    principal: Provisioner,
    factory: FactoryDep,
    settings: SettingsDep,
) -> MailboxSendingPublic:
    with transaction(factory) as s:
        admin.set_mailbox_sending(
            s,
            actor=principal.actor,
            mailbox_id=mailbox_id,
            may_send=body.may_send,
            max_messages_per_hour=_given(body, "max_messages_per_hour"),
            max_recipients_per_day=_given(body, "max_recipients_per_day"),
            clear_flag=body.clear_flag,
        )
        return _mailbox(s, mailbox_id, settings)


def _customer(s: Session, customer_id: int, settings: Settings) -> CustomerSendingPublic:
    hourly, daily = admin.customer_sending_usage(
        s, customer_id=customer_id, now=utcnow(), limits=SendingLimits.from_settings(settings)
    )
    return CustomerSendingPublic(
        customer_id=customer_id,
        messages_per_hour=UsagePublic.of(hourly),
        recipients_per_day=UsagePublic.of(daily),
    )


@router.get(
    "/customers/{customer_id}/sending", response_model=CustomerSendingPublic, responses=READ_ERRORS
)
def get_customer_sending(
    customer_id: Id, _: Reader, factory: FactoryDep, settings: SettingsDep
) -> CustomerSendingPublic:
    with transaction(factory) as s:
        return _customer(s, customer_id, settings)


@router.patch(
    "/customers/{customer_id}/sending",
    response_model=CustomerSendingPublic,
    responses=WRITE_ERRORS,
)
def update_customer_sending(
    customer_id: Id,
    body: CustomerSendingUpdate,
    principal: Provisioner,
    factory: FactoryDep,
    settings: SettingsDep,
) -> CustomerSendingPublic:
    with transaction(factory) as s:
        admin.set_customer_limits(
            s,
            actor=principal.actor,
            customer_id=customer_id,
            max_messages_per_hour=_given(body, "max_messages_per_hour"),
            max_recipients_per_day=_given(body, "max_recipients_per_day"),
        )
        return _customer(s, customer_id, settings)
