"""The mailbox user's self-service area at /me: log in with the address and password, change
the password, see usage against quota, set forwarding and the auto-reply.

Its own cookie (``mh_me``, path ``/me``) and its own session table: it never grants the
operator portal, and an operator's session does not open it. Every password check (login,
password change) reserves an attempt with the POP3 door of ``app.services.throttle`` first:
the same budget as POP3 and SMTP AUTH, so this area is no faster way to guess a password.
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from app.db import transaction
from app.errors import MailhostError, TemporaryError, ValidationError
from app.maildir import MailboxRef
from app.models import Mailbox, MailboxSession
from app.services import mailbox_sessions, selfservice, throttle
from app.services.audit import Actor, audit
from web.deps import SessionDep, client_ip
from web.portal.auth import CSRF_REFUSED, settle_unchecked, throttled_text
from web.portal.forms import FormState, PostForm
from web.portal.render import render

USER_COOKIE = "mh_me"
LOGIN_CSRF_COOKIE = "mh_me_login_csrf"
DOOR: Final = "pop3"  # the same throttle (realm "mail") as POP3 and SMTP AUTH


class UserLoginRequired(Exception):
    """No valid mailbox-user session: redirect to /me/login."""


@dataclass
class User:
    """The mailbox user of this request."""

    mailbox: Mailbox
    row: MailboxSession
    raw: str
    remote_addr: str | None

    @property
    def actor(self) -> Actor:
        return Actor("mailbox", self.mailbox.address, self.remote_addr)


def current_user(request: Request, session: SessionDep) -> User:
    raw = request.cookies.get(USER_COOKIE)
    if raw:
        found = mailbox_sessions.find_user_session(session, raw=raw)
        if found is not None:
            return User(found[1], found[0], raw, client_ip(request))
    raise UserLoginRequired()


UserDep = Annotated[User, Depends(current_user)]


async def user_form(request: Request, user: UserDep) -> PostForm:
    data = await request.form()
    token = data.get("csrf_token")
    if not isinstance(token, str) or not hmac.compare_digest(
        token.encode(), user.row.csrf_token.encode()
    ):
        raise CSRF_REFUSED
    return PostForm(data)


UserFormDep = Annotated[PostForm, Depends(user_form)]

router = APIRouter(include_in_schema=False)


def _login_page(
    request: Request, *, address: str = "", error: str | None = None, status: int = 200
) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = render(
        request,
        "me/login.html",
        {"login_csrf": token, "address": address, "error": error},
        status=status,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.app.state.settings.cookie_secure,
        path="/me/login",
    )
    return response


@router.get("/me/login")
def login_form(request: Request) -> HTMLResponse:
    return _login_page(request)


def _reserve(request: Request, address: str) -> tuple[Any, throttle.ThrottlePolicy]:
    policy = throttle.ThrottlePolicy.from_settings(request.app.state.settings)
    with transaction(request.app.state.session_factory) as session:
        verdict = throttle.reserve(
            session, door=DOOR, address=client_ip(request), account=address, policy=policy
        )
    return verdict, policy


def _refused(response: HTMLResponse, refused: throttle.Refused) -> HTMLResponse:
    # RFC 6585 section 4: 429 with Retry-After; the password was not looked at.
    response.headers["Retry-After"] = str(refused.retry_after)
    return response


@router.post("/me/login", response_model=None)
async def login(request: Request) -> Response:
    data = await request.form()
    token = data.get("csrf_token")
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE)
    if not isinstance(token, str) or not cookie or not hmac.compare_digest(token, cookie):
        raise CSRF_REFUSED
    address = str(data.get("address") or "").strip()
    password = str(data.get("password") or "")
    if not address or not password:
        return _login_page(
            request, address=address, error="Enter your address and password.", status=400
        )
    ticket, policy = await run_in_threadpool(_reserve, request, address)
    if isinstance(ticket, throttle.Refused):
        page = _login_page(request, address=address, error=throttled_text(ticket), status=429)
        return _refused(page, ticket)
    factory = request.app.state.session_factory
    max_age = request.app.state.settings.session_max_age
    old = request.cookies.get(USER_COOKIE)

    def check() -> str | None:
        with transaction(factory) as session:
            mailbox = mailbox_sessions.authenticate_user(
                session, address=address, password=password
            )
            if mailbox is None:
                return None  # the reserved attempt stays charged: it is the failure
            throttle.settle(session, ticket=ticket, outcome=throttle.Outcome.SUCCESS, policy=policy)
            if old:
                mailbox_sessions.end_user_session(session, raw=old)
            raw = mailbox_sessions.open_user_session(
                session, mailbox_id=mailbox.id, max_age=max_age
            )
            audit(
                session,
                actor=Actor("mailbox", mailbox.address, client_ip(request)),
                action="mailbox.self_login",
                object_type="mailbox",
                object_id=mailbox.id,
                object_name=mailbox.address,
            )
            return raw

    try:
        raw = await run_in_threadpool(check)
    except (TemporaryError, SQLAlchemyError):
        await run_in_threadpool(settle_unchecked, factory, ticket, policy)
        raise
    if raw is None:
        return _login_page(
            request,
            address=address,
            error="Wrong address or password (or the mailbox is disabled).",
            status=400,
        )
    response = RedirectResponse("/me", status_code=303)
    response.set_cookie(
        USER_COOKIE,
        raw,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=request.app.state.settings.cookie_secure,
        path="/me",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/me/login")
    return response


@router.post("/me/logout")
def logout(session: SessionDep, user: UserDep, form: UserFormDep) -> RedirectResponse:
    mailbox_sessions.end_user_session(session, raw=user.raw)
    session.commit()
    response = RedirectResponse("/me/login", status_code=303)
    response.delete_cookie(USER_COOKIE, path="/me")
    return response


def _forms() -> dict[str, FormState]:
    return {
        "password": FormState(fields=("current_password", "new_password", "repeat_password")),
        "forward": FormState(fields=("forward_to",)),
        "autoreply": FormState(fields=("subject", "body", "starts_on", "ends_on")),
    }


def _home(
    request: Request,
    session: SessionDep,
    user: User,
    forms: dict[str, FormState] | None = None,
    status: int = 200,
) -> HTMLResponse:
    mailbox = user.mailbox
    usage = request.app.state.store.usage(MailboxRef(mailbox.domain.name, mailbox.local_part))
    forms = forms or _forms()
    forward = selfservice.get_forward(session, mailbox_id=mailbox.id)
    reply = selfservice.get_auto_reply(session, mailbox_id=mailbox.id)
    return render(
        request,
        "me/home.html",
        {
            "user": mailbox,
            "user_csrf": user.row.csrf_token,
            "usage": usage,
            "forward": forward,
            "reply": reply,
            "forms": forms,
            "aliases": selfservice.aliases_of(session, address=mailbox.address),
        },
        status=status,
    )


@router.get("/me")
def home(request: Request, session: SessionDep, user: UserDep) -> HTMLResponse:
    return _home(request, session, user)


def _done(what: str) -> RedirectResponse:
    return RedirectResponse(f"/me?saved={what}", status_code=303)


def _failed(
    request: Request, session: SessionDep, user: User, name: str, form: PostForm, exc: MailhostError
) -> HTMLResponse:
    session.rollback()
    forms = _forms()
    forms[name].values = form.values()
    forms[name].add(exc, default_field=forms[name].fields[0])
    return _home(request, session, user, forms, status=400)


@router.post("/me/password", response_model=None)
async def change_password(
    request: Request, session: SessionDep, user: UserDep, form: UserFormDep
) -> Response:
    ticket, policy = await run_in_threadpool(_reserve, request, user.mailbox.address)
    if isinstance(ticket, throttle.Refused):
        forms = _forms()
        forms["password"].general.append(throttled_text(ticket))
        return _refused(_home(request, session, user, forms, status=429), ticket)

    def change() -> None:
        changed = selfservice.change_own_password(
            session,
            actor=user.actor,
            mailbox_id=user.mailbox.id,
            current=form.get("current_password"),
            new=form.get("new_password"),
            repeat=form.get("repeat_password"),
        )
        if not changed:
            raise ValidationError("the current password is wrong", field="current_password")
        throttle.settle(session, ticket=ticket, outcome=throttle.Outcome.SUCCESS, policy=policy)
        # Other browsers logged in as this user are logged out; this one stays.
        mailbox_sessions.end_user_sessions(session, mailbox_id=user.mailbox.id, keep=user.raw)
        session.commit()

    try:
        await run_in_threadpool(change)
    except MailhostError as exc:
        if exc.field != "current_password":  # not a password guess: give the attempt back
            await run_in_threadpool(
                settle_unchecked, request.app.state.session_factory, ticket, policy
            )
        return _failed(request, session, user, "password", form, exc)
    return _done("password")


@router.post("/me/forward", response_model=None)
def set_forward(
    request: Request, session: SessionDep, user: UserDep, form: UserFormDep
) -> Response:
    try:
        if form.get("action") == "clear":
            selfservice.clear_forward(session, actor=user.actor, mailbox_id=user.mailbox.id)
        else:
            selfservice.set_forward(
                session,
                actor=user.actor,
                mailbox_id=user.mailbox.id,
                address=form.text("forward_to"),
                keep_copy=form.checked("keep_copy"),
            )
        session.commit()
    except MailhostError as exc:
        return _failed(request, session, user, "forward", form, exc)
    return _done("forward")


def parse_date(text: str, *, field: str) -> dt.date | None:
    text = text.strip()
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValidationError("enter a date as YYYY-MM-DD", field=field) from None


@router.post("/me/autoreply", response_model=None)
def set_auto_reply(
    request: Request, session: SessionDep, user: UserDep, form: UserFormDep
) -> Response:
    try:
        if form.get("action") == "clear":
            selfservice.clear_auto_reply(session, actor=user.actor, mailbox_id=user.mailbox.id)
        else:
            selfservice.set_auto_reply(
                session,
                actor=user.actor,
                mailbox_id=user.mailbox.id,
                subject=form.get("subject"),
                body=form.get("body"),
                starts_on=parse_date(form.get("starts_on"), field="starts_on"),
                ends_on=parse_date(form.get("ends_on"), field="ends_on"),
                enabled=form.checked("enabled"),
            )
        session.commit()
    except MailhostError as exc:
        return _failed(request, session, user, "autoreply", form, exc)
    return _done("autoreply")


def install_user_login(app: Any) -> None:
    """No mailbox-user session: to /me/login (never to the operators' /login)."""

    async def on_user_login_required(request: Request, exc: Exception) -> Response:
        response = RedirectResponse("/me/login", status_code=303)
        response.delete_cookie(USER_COOKIE, path="/me")
        return response

    app.add_exception_handler(UserLoginRequired, on_user_login_required)
