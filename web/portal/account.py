"""The logged-in operator's own account: changing their own password (any role)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.errors import MailhostError, ValidationError
from app.services import accounts
from app.services.sessions import open_session
from web.deps import SessionDep
from web.portal.auth import (
    Auth,
    AuthDep,
    FormDep,
    set_session_cookie,
    throttle_keys,
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
    session: Session, auth: Auth, data: PostForm, *, keys: list[str], max_age: int
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
        session.commit()
    except MailhostError as exc:
        session.rollback()
        form.add(exc, default_field="new_password")
        if exc.field == "current_password":
            # A stolen session cookie must not become an unthrottled password oracle: a wrong
            # current password counts like a failed login for this user and address.
            accounts.record_login_failure(session, keys=keys)
            session.commit()
        return form, None
    return form, raw


@router.post("/account/password", response_model=None)
async def account_password(
    request: Request, session: SessionDep, auth: AuthDep, data: FormDep
) -> Response:
    keys = throttle_keys(auth.me.username, auth.remote_addr)
    delay = await run_in_threadpool(lambda: accounts.throttle_delay(session, keys=keys))
    if delay > 0:
        await asyncio.sleep(delay)
    max_age = request.app.state.settings.session_max_age
    form, raw = await run_in_threadpool(
        lambda: _change(session, auth, data, keys=keys, max_age=max_age)
    )
    if raw is None:
        return _page(request, form, status=422)
    response = redirect("/account?done=own_password")
    set_session_cookie(response, raw, request)
    return response
