"""Set or clear a mailbox's auto-reply and forwarding (what the user sets at /me), for
operators (``/mailboxes/{id}/auto-reply``) and customer administrators
(``/my/mailboxes/{id}/auto-reply``). Any operator may (support included): covering for
someone who left or is ill is a support request. The same pages serve both doors; the
services check the actor's customer (another customer's mailbox is "not found", 404) and
audit the change with the actor's identity. The rules themselves are
``app.services.selfservice``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from app.services import mailboxes, selfservice
from app.services.audit import Actor
from web.deps import SessionDep
from web.params import Id
from web.portal.auth import AuthDep, FormDep
from web.portal.common import redirect
from web.portal.forms import FormState, PostForm, saving
from web.portal.me import parse_date
from web.portal.render import render
from web.portal.tenant_auth import TenantDep, TenantFormDep

router = APIRouter()

REPLY_FIELDS = ("enabled", "subject", "body", "starts_on", "ends_on")
FORWARD_FIELDS = ("forward_to", "keep_copy")
OPERATOR_BASE = ""
TENANT_BASE = "/my"


def _page(
    request: Request,
    session: Session,
    mailbox_id: int,
    *,
    actor: Actor,
    base: str,
    reply_form: FormState | None = None,
    forward_form: FormState | None = None,
    status: int = 200,
) -> HTMLResponse:
    mailbox = mailboxes.get_mailbox(session, mailbox_id=mailbox_id, actor=actor)
    reply = selfservice.get_auto_reply(session, mailbox_id=mailbox_id, actor=actor)
    forward = selfservice.get_forward(session, mailbox_id=mailbox_id, actor=actor)
    reply_form = reply_form or FormState(
        values={
            "enabled": "on" if reply is None or reply.enabled else "",
            "subject": reply.subject if reply else "",
            "body": reply.body if reply else "",
            "starts_on": str(reply.starts_on or "") if reply else "",
            "ends_on": str(reply.ends_on or "") if reply else "",
        },
        fields=REPLY_FIELDS,
    )
    forward_form = forward_form or FormState(
        values={
            "forward_to": forward.address if forward else "",
            "keep_copy": "on" if forward is None or forward.keep_copy else "",
        },
        fields=FORWARD_FIELDS,
    )
    return render(
        request,
        "mailboxes/rules.html",
        {
            "base": base,
            "mailbox": mailbox,
            "reply": reply,
            "forward": forward,
            "reply_form": reply_form,
            "forward_form": forward_form,
        },
        status=status,
    )


def _save_auto_reply(
    request: Request, session: Session, data: PostForm, mailbox_id: int, actor: Actor, base: str
) -> Response:
    mailboxes.get_mailbox(session, mailbox_id=mailbox_id, actor=actor)  # 404 before 422
    form = FormState(values=data.values(), fields=REPLY_FIELDS)
    with saving(session, form, default_field="subject"):
        if data.get("action") == "clear":
            selfservice.clear_auto_reply(session, actor=actor, mailbox_id=mailbox_id)
        else:
            selfservice.set_auto_reply(
                session,
                actor=actor,
                mailbox_id=mailbox_id,
                subject=data.get("subject"),
                body=data.get("body"),
                starts_on=parse_date(data.get("starts_on"), field="starts_on"),
                ends_on=parse_date(data.get("ends_on"), field="ends_on"),
                enabled=data.checked("enabled"),
            )
    if not form.ok:
        return _page(
            request, session, mailbox_id, actor=actor, base=base, reply_form=form, status=422
        )
    return redirect(f"{base}/mailboxes/{mailbox_id}/auto-reply?done=saved")


def _save_forwarding(
    request: Request, session: Session, data: PostForm, mailbox_id: int, actor: Actor, base: str
) -> Response:
    mailboxes.get_mailbox(session, mailbox_id=mailbox_id, actor=actor)
    form = FormState(values=data.values(), fields=FORWARD_FIELDS)
    with saving(session, form, default_field="forward_to"):
        if data.get("action") == "clear":
            selfservice.clear_forward(session, actor=actor, mailbox_id=mailbox_id)
        else:
            selfservice.set_forward(
                session,
                actor=actor,
                mailbox_id=mailbox_id,
                address=data.text("forward_to"),
                keep_copy=data.checked("keep_copy"),
            )
    if not form.ok:
        return _page(
            request, session, mailbox_id, actor=actor, base=base, forward_form=form, status=422
        )
    return redirect(f"{base}/mailboxes/{mailbox_id}/auto-reply?done=saved")


# ------------------------------------------------------------------------------ operators
@router.get("/mailboxes/{mailbox_id}/auto-reply")
def mailbox_rules(
    request: Request, session: SessionDep, auth: AuthDep, mailbox_id: Id
) -> HTMLResponse:
    return _page(request, session, mailbox_id, actor=auth.actor, base=OPERATOR_BASE)


@router.post("/mailboxes/{mailbox_id}/auto-reply", response_model=None)
def save_auto_reply(
    request: Request, session: SessionDep, auth: AuthDep, data: FormDep, mailbox_id: Id
) -> Response:
    return _save_auto_reply(request, session, data, mailbox_id, auth.actor, OPERATOR_BASE)


@router.post("/mailboxes/{mailbox_id}/forwarding", response_model=None)
def save_forwarding(
    request: Request, session: SessionDep, auth: AuthDep, data: FormDep, mailbox_id: Id
) -> Response:
    return _save_forwarding(request, session, data, mailbox_id, auth.actor, OPERATOR_BASE)


# ------------------------------------------------------------------------------ customer admins
@router.get("/my/mailboxes/{mailbox_id}/auto-reply")
def my_mailbox_rules(
    request: Request, session: SessionDep, auth: TenantDep, mailbox_id: Id
) -> HTMLResponse:
    return _page(request, session, mailbox_id, actor=auth.actor, base=TENANT_BASE)


@router.post("/my/mailboxes/{mailbox_id}/auto-reply", response_model=None)
def my_save_auto_reply(
    request: Request, session: SessionDep, auth: TenantDep, data: TenantFormDep, mailbox_id: Id
) -> Response:
    return _save_auto_reply(request, session, data, mailbox_id, auth.actor, TENANT_BASE)


@router.post("/my/mailboxes/{mailbox_id}/forwarding", response_model=None)
def my_save_forwarding(
    request: Request, session: SessionDep, auth: TenantDep, data: TenantFormDep, mailbox_id: Id
) -> Response:
    return _save_forwarding(request, session, data, mailbox_id, auth.actor, TENANT_BASE)
