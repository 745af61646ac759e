"""Operator login sessions, CSRF tokens and role checks for the portal.

Theory of operation: the session cookie holds 32 random bytes; the database stores only
their SHA-256 (``WebSession.id_hash``), so a leaked table cannot be replayed. A new id is
issued at every login (no fixation) and the row is deleted at logout. Each session carries
its own CSRF token, which every POST form must echo in a hidden field; the login form, used
before a session exists, is protected by a double-submit cookie instead. Every password check
(login, own-password change) first reserves an attempt with ``app.services.throttle`` (door
``portal``); over budget it is answered 429 at once, without checking the password.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.db import transaction
from app.errors import TemporaryError
from app.models import ROLE_ADMIN, CustomerAdmin, Operator, WebSession, utcnow
from app.services import customer_admins, throttle
from app.services.audit import Actor, audit
from app.services.sessions import hash_session_id
from web.deps import SessionDep, client_ip
from web.portal import login_flow
from web.portal.errors import LoginRequired, PortalError, SeeOther, forbidden_role
from web.portal.forms import PostForm
from web.portal.render import render

SESSION_COOKIE = "mh_session"
LOGIN_CSRF_COOKIE = "mh_login_csrf"


@dataclass(frozen=True)
class Me:
    """Plain copy of the operator for templates: error pages render after the session is
    closed, when the ORM object can no longer load anything."""

    id: int
    username: str
    role: str


@dataclass
class Auth:
    """The logged-in operator of this request."""

    operator: Operator
    web_session: WebSession
    remote_addr: str | None
    me: Me
    csrf_token: str

    @property
    def is_admin(self) -> bool:
        return self.me.role == ROLE_ADMIN

    @property
    def actor(self) -> Actor:
        return Actor("operator", self.me.username, self.remote_addr)


def _next_url(request: Request) -> str:
    if request.method != "GET":
        return "/"
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def current_auth(request: Request, session: SessionDep) -> Auth:
    """The operator behind the session cookie, or a redirect to the login page."""
    raw = request.cookies.get(SESSION_COOKIE)
    if raw:
        web_session = session.get(WebSession, hash_session_id(raw))
        if web_session is not None and web_session.expires_at > utcnow():
            operator = session.get(Operator, web_session.operator_id)
            if operator is not None and operator.active:
                enrolment_gate(request, session, operator)
                auth = Auth(
                    operator,
                    web_session,
                    client_ip(request),
                    Me(operator.id, operator.username, operator.role),
                    web_session.csrf_token,
                )
                request.state.auth = auth
                return auth
    if raw and customer_admins.find_tenant_session(session, raw=raw) is not None:
        # A customer administrator: the ISP's pages do not exist for them (404, not 403);
        # the home page leads to their own.
        if request.url.path == "/":
            raise SeeOther("/my")
        raise PortalError(404, "Not found", "There is no page at this address.")
    raise LoginRequired(_next_url(request))


ENROLMENT_PATHS = ("/account/totp", "/my/account/totp")


def enrolment_gate(request: Request, session: Session, account: Operator | CustomerAdmin) -> None:
    """With ``totp_required_for_admins``, an admin without two-factor login sees only the
    enrolment page (and can log out) until it is on."""
    path = request.url.path
    if path.startswith(ENROLMENT_PATHS) or path in ("/logout", "/my/logout"):
        return
    if login_flow.needs_enrolment(session, request.app.state.settings, account):
        target = "/account/totp" if isinstance(account, Operator) else "/my/account/totp"
        raise SeeOther(target)


AuthDep = Annotated[Auth, Depends(current_auth)]


def require_admin(auth: AuthDep) -> Auth:
    if not auth.is_admin:
        raise forbidden_role(auth.me.role, "create, change or delete this")
    return auth


AdminDep = Annotated[Auth, Depends(require_admin)]

CSRF_REFUSED = PortalError(
    403,
    "Form expired or forged",
    "This form did not carry a valid security token (CSRF), so nothing was changed. "
    "Go back, reload the page and submit it again.",
)


async def checked_form(request: Request, auth: AuthDep) -> PostForm:
    """The submitted form, after checking its CSRF token against the session's."""
    data = await request.form()
    token = data.get("csrf_token")
    if not isinstance(token, str) or not hmac.compare_digest(
        token.encode(), auth.csrf_token.encode()
    ):
        raise CSRF_REFUSED
    return PostForm(data)


FormDep = Annotated[PostForm, Depends(checked_form)]


def safe_next(url: str | None) -> str:
    """Only same-site paths: never ``//evil.example`` or an absolute URL."""
    if not url or not url.startswith("/") or url.startswith("//") or url.startswith("/\\"):
        return "/"
    return url


router = APIRouter(include_in_schema=False)


def _login_page(
    request: Request, *, next_url: str, username: str = "", error: str | None = None, status: int
) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = render(
        request,
        "auth/login.html",
        {"login_csrf": token, "next_url": next_url, "username": username, "error": error},
        status=status,
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


@router.get("/login")
def login_form(request: Request, next: str = "/") -> HTMLResponse:  # noqa: A002
    return _login_page(request, next_url=safe_next(next), status=200)


def reserve_login(
    request: Request, *, username: str, ip: str | None
) -> tuple[throttle.Ticket | throttle.Refused, throttle.ThrottlePolicy]:
    """Reserve one password check (committed, so other workers count it while in flight)."""
    policy = throttle.ThrottlePolicy.from_settings(request.app.state.settings)
    with transaction(request.app.state.session_factory) as session:
        verdict = throttle.reserve(
            session, door="portal", address=ip, account=username, policy=policy
        )
    return verdict, policy


def settle_unchecked(
    factory: sessionmaker[Session], ticket: throttle.Ticket, policy: throttle.ThrottlePolicy
) -> None:
    """The server failed before a verdict: give the attempt back (best effort)."""
    try:
        with transaction(factory) as session:
            throttle.settle(
                session, ticket=ticket, outcome=throttle.Outcome.UNCHECKED, policy=policy
            )
    except (TemporaryError, SQLAlchemyError):
        pass  # the charge drains by itself like a failure


def throttled_text(refused: throttle.Refused) -> str:
    minutes = max(1, -(-refused.retry_after // 60))
    wait = "1 minute" if minutes == 1 else f"{minutes} minutes"
    if refused.reason == "address":
        return f"Too many failed logins from your address. Try again in {wait}."
    return (
        f"Too many failed logins for this user name. Try again in {wait}, or from an "
        "address you have logged in from before."
    )


def set_session_cookie(response: Response, raw: str, request: Request) -> None:
    settings = request.app.state.settings
    response.set_cookie(
        SESSION_COOKIE,
        raw,
        max_age=settings.session_max_age,
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
        path="/",
    )


@router.post("/login", response_model=None)
async def login(request: Request) -> Response:
    data = await request.form()
    token = data.get("csrf_token")
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not isinstance(token, str) or not cookie or not hmac.compare_digest(token, cookie):
        raise CSRF_REFUSED
    username = str(data.get("username") or "").strip()
    password = str(data.get("password") or "")
    next_url = safe_next(str(data.get("next") or "/"))
    if not username or not password:
        return _login_page(
            request,
            next_url=next_url,
            username=username,
            error="Enter your user name and password.",
            status=400,
        )
    ip = client_ip(request)
    factory = request.app.state.session_factory
    settings = request.app.state.settings
    ticket, policy = await run_in_threadpool(
        lambda: reserve_login(request, username=username, ip=ip)
    )
    if isinstance(ticket, throttle.Refused):
        # RFC 6585 section 4: 429 with Retry-After; the password was not looked at.
        refusal = _login_page(
            request,
            next_url=next_url,
            username=username,
            error=throttled_text(ticket),
            status=429,
        )
        refusal.headers["Retry-After"] = str(ticket.retry_after)
        return refusal
    try:
        outcome = await run_in_threadpool(
            lambda: login_flow.password_step(
                factory,
                username=username,
                password=password,
                ticket=ticket,
                policy=policy,
                remote_addr=ip,
                old_cookie=request.cookies.get(SESSION_COOKIE),
                max_age=settings.session_max_age,
                next_url=next_url,
            )
        )
    except (TemporaryError, SQLAlchemyError):
        await run_in_threadpool(settle_unchecked, factory, ticket, policy)
        raise
    if outcome.challenge_cookie is not None:  # two-factor login: the code comes next
        response = RedirectResponse("/login/totp", status_code=303)
        response.set_cookie(
            login_flow.CHALLENGE_COOKIE,
            outcome.challenge_cookie,
            max_age=login_flow.CHALLENGE_SECONDS,
            httponly=True,
            samesite="strict",
            secure=settings.cookie_secure,
            path="/login",
        )
        return response
    raw = outcome.session_cookie
    if raw is None:
        return _login_page(
            request,
            next_url=next_url,
            username=username,
            error="Wrong user name or password (or the account is disabled).",
            status=400,
        )
    response = RedirectResponse(next_url, status_code=303)
    set_session_cookie(response, raw, request)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
def logout(session: SessionDep, auth: AuthDep, form: FormDep) -> RedirectResponse:
    session.delete(auth.web_session)
    audit(
        session,
        actor=auth.actor,
        action="logout",
        object_type="operator",
        object_id=auth.me.id,
        object_name=auth.me.username,
    )
    session.commit()
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
