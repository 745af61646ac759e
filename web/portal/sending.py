"""Sending control pages: a mailbox's may_send, limits and "sending limited" flag, and a
customer's limits (all its mailboxes together). Admins change them; everyone sees them."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app.config import Settings
from app.models import utcnow
from app.services import customers, mailboxes
from app.services import sending_admin as admin
from app.services.sending import SendingLimits
from web.deps import SessionDep
from web.params import Id
from web.portal.auth import AdminDep, AuthDep, FormDep
from web.portal.common import redirect
from web.portal.forms import FormState, saving
from web.portal.render import render

router = APIRouter()

MAILBOX_FIELDS = ("may_send", "max_messages_per_hour", "max_recipients_per_day")
CUSTOMER_FIELDS = ("max_messages_per_hour", "max_recipients_per_day")


def _limits(request: Request) -> SendingLimits:
    settings: Settings = request.app.state.settings
    return SendingLimits.from_settings(settings)


def _text(value: int | None) -> str:
    return "" if value is None else str(value)


def _mailbox_page(
    request: Request, session: SessionDep, mailbox_id: int, form: FormState | None, status: int
) -> HTMLResponse:
    mailbox = mailboxes.get_mailbox(session, mailbox_id=mailbox_id)
    sending = admin.mailbox_sending_status(
        session, mailbox_id=mailbox_id, now=utcnow(), limits=_limits(request)
    )
    form = form or FormState(
        values={
            "may_send": "on" if mailbox.may_send else "",
            "max_messages_per_hour": _text(mailbox.max_messages_per_hour),
            "max_recipients_per_day": _text(mailbox.max_recipients_per_day),
        },
        fields=MAILBOX_FIELDS,
    )
    return render(
        request,
        "mailboxes/sending.html",
        {"mailbox": mailbox, "sending": sending, "form": form},
        status=status,
    )


@router.get("/mailboxes/{mailbox_id}/sending")
def mailbox_sending(
    request: Request, session: SessionDep, auth: AuthDep, mailbox_id: Id
) -> HTMLResponse:
    return _mailbox_page(request, session, mailbox_id, None, 200)


@router.post("/mailboxes/{mailbox_id}/sending", response_model=None)
def mailbox_sending_save(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep, mailbox_id: Id
) -> Response:
    mailboxes.get_mailbox(session, mailbox_id=mailbox_id)
    form = FormState(values=data.values(), fields=MAILBOX_FIELDS)
    with saving(session, form, default_field="max_messages_per_hour"):
        admin.set_mailbox_sending(
            session,
            actor=auth.actor,
            mailbox_id=mailbox_id,
            may_send=data.checked("may_send"),
            max_messages_per_hour=admin.parse_limit(
                data.text("max_messages_per_hour"), field="max_messages_per_hour"
            ),
            max_recipients_per_day=admin.parse_limit(
                data.text("max_recipients_per_day"), field="max_recipients_per_day"
            ),
        )
    if not form.ok:
        return _mailbox_page(request, session, mailbox_id, form, 422)
    return redirect(f"/mailboxes/{mailbox_id}/sending?done=saved")


@router.post("/mailboxes/{mailbox_id}/sending/clear", response_model=None)
def mailbox_sending_clear(session: SessionDep, auth: AdminDep, mailbox_id: Id) -> Response:
    admin.set_mailbox_sending(session, actor=auth.actor, mailbox_id=mailbox_id, clear_flag=True)
    session.commit()
    return redirect(f"/mailboxes/{mailbox_id}/sending?done=cleared")


def _customer_page(
    request: Request, session: SessionDep, customer_id: int, form: FormState | None, status: int
) -> HTMLResponse:
    customer = customers.get_customer(session, customer_id=customer_id)
    hourly, daily = admin.customer_sending_usage(
        session, customer_id=customer_id, now=utcnow(), limits=_limits(request)
    )
    form = form or FormState(
        values={
            "max_messages_per_hour": _text(customer.max_messages_per_hour),
            "max_recipients_per_day": _text(customer.max_recipients_per_day),
        },
        fields=CUSTOMER_FIELDS,
    )
    return render(
        request,
        "customers/sending.html",
        {"customer": customer, "hourly": hourly, "daily": daily, "form": form},
        status=status,
    )


@router.get("/customers/{customer_id}/sending")
def customer_sending(
    request: Request, session: SessionDep, auth: AuthDep, customer_id: Id
) -> HTMLResponse:
    return _customer_page(request, session, customer_id, None, 200)


@router.post("/customers/{customer_id}/sending", response_model=None)
def customer_sending_save(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep, customer_id: Id
) -> Response:
    customers.get_customer(session, customer_id=customer_id)
    form = FormState(values=data.values(), fields=CUSTOMER_FIELDS)
    with saving(session, form, default_field="max_messages_per_hour"):
        admin.set_customer_limits(
            session,
            actor=auth.actor,
            customer_id=customer_id,
            max_messages_per_hour=admin.parse_limit(
                data.text("max_messages_per_hour"), field="max_messages_per_hour"
            ),
            max_recipients_per_day=admin.parse_limit(
                data.text("max_recipients_per_day"), field="max_recipients_per_day"
            ),
        )
    if not form.ok:
        return _customer_page(request, session, customer_id, form, 422)
    return redirect(f"/customers/{customer_id}/sending?done=saved")
