"""Two-factor enrolment pages: ``/account/totp`` (operators) and ``/my/account/totp``
(customer administrators). The QR code is rendered by the server (app/services/totp.py) and
inlined as SVG: no external image or script. Recovery codes are answered once, never cached."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from app.errors import MailhostError, ValidationError
from app.services import totp
from app.services.audit import Actor
from web.deps import SessionDep
from web.portal.auth import AuthDep, FormDep
from web.portal.common import redirect
from web.portal.forms import PostForm
from web.portal.render import render
from web.portal.tenant_auth import TenantDep, TenantFormDep

router = APIRouter()


def _page(
    request: Request,
    session: Session,
    owner: totp.Owner,
    base: str,
    *,
    error: str | None = None,
    codes: list[str] | None = None,
    status: int = 200,
) -> HTMLResponse:
    secret = totp.pending_secret(session, owner=owner)
    qr = totp.qr_svg(totp.provisioning_uri(secret, owner)) if secret else None
    response = render(
        request,
        "account/totp.html",
        {
            "base": base,
            "enrolled": totp.is_enrolled(session, owner=owner),
            "secret": secret,
            "qr_svg": qr,
            "codes": codes,
            "codes_left": totp.recovery_codes_left(session, owner=owner),
            "error": error,
            "required": request.app.state.settings.totp_required_for_admins,
        },
        status=status,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _start(request: Request, session: Session, owner: totp.Owner, base: str) -> Response:
    try:
        totp.begin_enrolment(session, owner=owner)
    except MailhostError as exc:
        session.rollback()
        return _page(request, session, owner, base, error=exc.message, status=409)
    session.commit()
    return redirect(f"{base}/account/totp")


def _confirm(
    request: Request,
    session: Session,
    owner: totp.Owner,
    actor: Actor,
    base: str,
    data: PostForm,
) -> Response:
    try:
        codes = totp.confirm_enrolment(session, actor=actor, owner=owner, code=data.text("code"))
    except ValidationError as exc:
        session.rollback()
        return _page(request, session, owner, base, error=exc.message, status=422)
    session.commit()
    return _page(request, session, owner, base, codes=codes)


def _disable(
    request: Request,
    session: Session,
    owner: totp.Owner,
    actor: Actor,
    base: str,
    data: PostForm,
) -> Response:
    # A current code (or a recovery code) is needed: a session left open on a shared
    # computer must not be enough to turn the second factor off.
    if totp.verify_second_factor(session, owner=owner, code=data.text("code")) is None:
        session.rollback()
        return _page(request, session, owner, base, error="This code is not valid.", status=422)
    totp.reset(session, actor=actor, owner=owner)
    session.commit()
    return redirect(f"{base}/account/totp")


def _operator(auth: AuthDep) -> totp.Owner:
    return totp.Owner("operator", auth.me.id, auth.me.username)


def _tenant(auth: TenantDep) -> totp.Owner:
    return totp.Owner("customer_admin", auth.me.id, auth.me.username)


@router.get("/account/totp")
def operator_page(request: Request, session: SessionDep, auth: AuthDep) -> HTMLResponse:
    return _page(request, session, _operator(auth), "")


@router.post("/account/totp/start", response_model=None)
def operator_start(request: Request, session: SessionDep, auth: AuthDep, data: FormDep) -> Response:
    return _start(request, session, _operator(auth), "")


@router.post("/account/totp/confirm", response_model=None)
def operator_confirm(
    request: Request, session: SessionDep, auth: AuthDep, data: FormDep
) -> Response:
    return _confirm(request, session, _operator(auth), auth.actor, "", data)


@router.post("/account/totp/disable", response_model=None)
def operator_disable(
    request: Request, session: SessionDep, auth: AuthDep, data: FormDep
) -> Response:
    return _disable(request, session, _operator(auth), auth.actor, "", data)


@router.get("/my/account/totp")
def tenant_page(request: Request, session: SessionDep, auth: TenantDep) -> HTMLResponse:
    return _page(request, session, _tenant(auth), "/my")


@router.post("/my/account/totp/start", response_model=None)
def tenant_start(
    request: Request, session: SessionDep, auth: TenantDep, data: TenantFormDep
) -> Response:
    return _start(request, session, _tenant(auth), "/my")


@router.post("/my/account/totp/confirm", response_model=None)
def tenant_confirm(
    request: Request, session: SessionDep, auth: TenantDep, data: TenantFormDep
) -> Response:
    return _confirm(request, session, _tenant(auth), auth.actor, "/my", data)


@router.post("/my/account/totp/disable", response_model=None)
def tenant_disable(
    request: Request, session: SessionDep, auth: TenantDep, data: TenantFormDep
) -> Response:
    return _disable(request, session, _tenant(auth), auth.actor, "/my", data)
