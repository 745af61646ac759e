"""The second login step, ``/login/totp``: a current TOTP code or a recovery code turns the
challenge a verified password left (web/portal/login_flow.py) into a session."""

from __future__ import annotations

import hmac
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.db import transaction
from app.errors import TemporaryError
from app.models import CustomerAdmin, LoginChallenge, Operator, utcnow
from app.services import throttle, totp
from app.services.sessions import hash_session_id
from web.deps import client_ip
from web.portal.auth import (
    CSRF_REFUSED,
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    set_session_cookie,
    settle_unchecked,
    throttled_text,
)
from web.portal.login_flow import CHALLENGE_COOKIE, open_for, owner_of
from web.portal.render import render

router = APIRouter(include_in_schema=False)


# ------------------------------------------------------------------------------ /login/totp
def _challenge(
    session: Session, raw: str | None
) -> tuple[LoginChallenge, Operator | CustomerAdmin] | None:
    if not raw:
        return None
    row = session.get(LoginChallenge, hash_session_id(raw))
    if row is None or row.expires_at <= utcnow():
        return None
    account: Operator | CustomerAdmin | None
    if row.operator_id is not None:
        account = session.get(Operator, row.operator_id)
    else:
        account = session.get(CustomerAdmin, row.customer_admin_id)
    if account is None or not account.active:
        return None
    return row, account


def _code_page(request: Request, *, error: str | None = None, status: int = 200) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = render(
        request, "auth/totp.html", {"login_csrf": token, "error": error}, status=status
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.app.state.settings.cookie_secure,
        path="/login",
    )
    return response


@router.get("/login/totp", response_model=None)
def code_form(request: Request) -> Response:
    with transaction(request.app.state.session_factory) as session:
        found = _challenge(session, request.cookies.get(CHALLENGE_COOKIE))
    if found is None:
        return RedirectResponse("/login", status_code=303)
    return _code_page(request)


def _code_step(
    factory: sessionmaker[Session],
    *,
    raw: str | None,
    code: str,
    ticket: throttle.Ticket,
    policy: throttle.ThrottlePolicy,
    remote_addr: str | None,
    old_cookie: str | None,
    max_age: int,
) -> tuple[str, str] | None:
    """(session cookie, next url) when the code is right; None otherwise."""
    with transaction(factory) as session:
        found = _challenge(session, raw)
        if found is None:
            return None
        challenge, account = found
        how = totp.verify_second_factor(session, owner=owner_of(account), code=code)
        if how is None:
            return None
        throttle.settle(session, ticket=ticket, outcome=throttle.Outcome.SUCCESS, policy=policy)
        next_url = challenge.next_url
        session.delete(challenge)
        cookie = open_for(
            session,
            account,
            remote_addr=remote_addr,
            old_cookie=old_cookie,
            max_age=max_age,
            detail="second factor: " + ("recovery code" if how == "recovery" else "TOTP code"),
        )
        return cookie, next_url


@router.post("/login/totp", response_model=None)
async def code_submit(request: Request) -> Response:
    data = await request.form()
    token = data.get("csrf_token")
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not isinstance(token, str) or not cookie or not hmac.compare_digest(token, cookie):
        raise CSRF_REFUSED
    code = str(data.get("code") or "").strip()
    raw = request.cookies.get(CHALLENGE_COOKIE)
    factory = request.app.state.session_factory
    settings = request.app.state.settings
    with transaction(factory) as session:
        found = _challenge(session, raw)
        username = found[1].username if found else None
    if username is None:
        return RedirectResponse("/login", status_code=303)
    if not code:
        return _code_page(request, error="Enter the code from your app.", status=400)
    ip = client_ip(request)
    policy = throttle.ThrottlePolicy.from_settings(settings)

    def reserve() -> throttle.Ticket | throttle.Refused:
        with transaction(factory) as s:
            return throttle.reserve(
                s, door="portal", address=ip, account=f"2fa:{username}", policy=policy
            )

    ticket = await run_in_threadpool(reserve)
    if isinstance(ticket, throttle.Refused):
        refusal = _code_page(request, error=throttled_text(ticket), status=429)
        refusal.headers["Retry-After"] = str(ticket.retry_after)
        return refusal
    try:
        result = await run_in_threadpool(
            lambda: _code_step(
                factory,
                raw=raw,
                code=code,
                ticket=ticket,
                policy=policy,
                remote_addr=ip,
                old_cookie=request.cookies.get(SESSION_COOKIE),
                max_age=settings.session_max_age,
            )
        )
    except (TemporaryError, SQLAlchemyError):
        await run_in_threadpool(settle_unchecked, factory, ticket, policy)
        raise
    if result is None:
        return _code_page(
            request, error="This code is not valid (or was used already).", status=400
        )
    session_cookie, next_url = result
    response = RedirectResponse(next_url, status_code=303)
    set_session_cookie(response, session_cookie, request)
    response.delete_cookie(CHALLENGE_COOKIE, path="/login")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response
