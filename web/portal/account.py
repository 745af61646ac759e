"""The logged-in operator's own account: changing their own password (any role)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.errors import MailhostError, ValidationError
from app.services import accounts, throttle
from app.services.sessions import open_session
from web.deps import SessionDep
from web.portal.auth import (
    Auth,
    AuthDep,
    FormDep,
    reserve_login,
    set_session_cookie,
    throttled_text,
)
from web.portal.common import redirect
from web.portal.forms import FormState, PostForm
from web.portal.render import render

router = APIRouter()

PASSWORD_FIELDS = ("current_password", "new_password", "new_password_confirm")


def _page(request: Request, form: FormState, *, status: int = 200) -> HTMLResponse:
    return render(request, "account/index.html", {"form": form}, status=status)


@router.get("/account")
def account(request: Request, auth: AuthDep) -> HTMLResponse:
    return _page(request, FormState(fields=PASSWORD_FIELDS))


def _change(
    session: Session,
    auth: Auth,
    data: PostForm,
    *,
    ticket: throttle.Ticket,
    policy: throttle.ThrottlePolicy,
    max_age: int,
) -> tuple[FormState, str | None]:
    """(form with errors, None) or (empty form, the cookie value of the rotated session)."""
    form = FormState(fields=PASSWORD_FIELDS)
    new_password = data.get("new_password")
    try:
        # Checked before the current password so a typo costs no hash and no failure count.
        if new_password != data.get("new_password_confirm"):
            raise ValidationError("the two new passwords differ", field="new_password_confirm")
        accounts.change_own_password(
            session,
            actor=auth.actor,
            operator_id=auth.me.id,
            current_password=data.get("current_password"),
            new_password=new_password,
        )
        # A changed password is often a reaction to a leak: the service ended every session
        # of this operator (on any machine); this browser continues on a fresh id and token.
        raw = open_session(
            session, operator_id=auth.me.id, remote_addr=auth.remote_addr, max_age=max_age
        )
        throttle.settle(session, ticket=ticket, outcome=throttle.Outcome.SUCCESS, policy=policy)
        session.commit()
    except MailhostError as exc:
        session.rollback()
        form.add(exc, default_field="new_password")
        # A stolen session cookie must not become an unthrottled password oracle: a wrong
        # current password keeps the reserved attempt charged, like a failed login for this
        # user and address. Any other refusal (new passwords differ, too short) gives it back.
        if exc.field != "current_password":
            throttle.settle(
                session, ticket=ticket, outcome=throttle.Outcome.UNCHECKED, policy=policy
            )
            session.commit()
        return form, None
    return form, raw


@router.post("/account/password", response_model=None)
async def account_password(
    request: Request, session: SessionDep, auth: AuthDep, data: FormDep
) -> Response:
    ticket, policy = await run_in_threadpool(
        lambda: reserve_login(request, username=auth.me.username, ip=auth.remote_addr)
    )
    if isinstance(ticket, throttle.Refused):
        form = FormState(fields=PASSWORD_FIELDS)
        form.add(ValidationError(throttled_text(ticket), field="current_password"))
        refusal = _page(request, form, status=429)
        refusal.headers["Retry-After"] = str(ticket.retry_after)
        return refusal
    max_age = request.app.state.settings.session_max_age
    form, raw = await run_in_threadpool(
        lambda: _change(session, auth, data, ticket=ticket, policy=policy, max_age=max_age)
    )
    if raw is None:
        return _page(request, form, status=422)
    response = redirect("/account?done=own_password")
    set_session_cookie(response, raw, request)
    return response
