"""API tokens in the portal, for both doors: the ISP's (``/tokens``: admins create and revoke,
optionally bound to a customer) and a customer administrator's (``/my/tokens``: tokens bound
to their own customer only). The rules are ``app.services.accounts``: a customer actor lists,
creates and revokes its own customer's tokens only (another token is "not found", 404)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from app.errors import ValidationError
from app.models import CUSTOMER_SCOPES, SCOPES
from app.services import accounts, customers
from app.services.audit import Actor
from web.deps import SessionDep
from web.params import Id
from web.portal.auth import AdminDep, AuthDep, FormDep
from web.portal.common import redirect
from web.portal.forms import FormState, PostForm, saving
from web.portal.render import render
from web.portal.tenant_auth import TenantDep, TenantFormDep

router = APIRouter()

TOKEN_FIELDS = ("name", "scopes", "owner", "customer")
ISP = ""
TENANT = "/my"


def _list(
    request: Request, session: Session, actor: Actor, base: str, manage: bool
) -> HTMLResponse:
    rows = accounts.list_tokens(session, actor=actor)
    names = (
        {c.id: c.name for c in customers.list_customers(session, limit=10_000)} if not base else {}
    )
    return render(
        request,
        "tokens/list.html",
        {"tokens": rows, "base": base, "manage": manage, "customer_names": names},
    )


def _new_page(
    request: Request, base: str, form: FormState, chosen: list[str], status: int = 200
) -> HTMLResponse:
    scopes = CUSTOMER_SCOPES if base else SCOPES
    return render(
        request,
        "tokens/new.html",
        {"form": form, "scopes": scopes, "chosen": chosen, "base": base},
        status=status,
    )


def _create(
    request: Request,
    session: Session,
    data: PostForm,
    actor: Actor,
    base: str,
    default_owner: str,
    customer_id: int | None,
) -> Response:
    form = FormState(values=data.values(), fields=TOKEN_FIELDS)
    chosen = data.getlist("scopes")
    with saving(session, form, default_field="name"):
        if not chosen:
            raise ValidationError("choose at least one scope", field="scopes")
        if not base and data.text("customer"):  # the ISP binds a token to a customer
            customer_id = customers.get_customer_by_name(session, name=data.text("customer")).id
        token, secret = accounts.create_token(
            session,
            actor=actor,
            name=data.text("name"),
            scopes=chosen,
            owner=data.text("owner") or default_owner,
            customer_id=customer_id,
        )
    if not form.ok:
        return _new_page(request, base, form, chosen, status=422)
    response = render(
        request, "tokens/created.html", {"token": token, "secret": secret, "base": base}
    )
    response.headers["Cache-Control"] = "no-store"
    return response


# ------------------------------------------------------------------------------ the ISP's
@router.get("/tokens")
def token_list(request: Request, session: SessionDep, auth: AuthDep) -> HTMLResponse:
    return _list(request, session, auth.actor, ISP, auth.is_admin)


@router.get("/tokens/new")
def token_new(request: Request, auth: AdminDep) -> HTMLResponse:
    form = FormState(values={"scopes": "read"}, fields=TOKEN_FIELDS)
    return _new_page(request, ISP, form, ["read"])


@router.post("/tokens/new", response_model=None)
def token_create(request: Request, session: SessionDep, auth: AdminDep, data: FormDep) -> Response:
    return _create(request, session, data, auth.actor, ISP, auth.me.username, None)


@router.post("/tokens/{token_id}/revoke")
def token_revoke(session: SessionDep, auth: AdminDep, data: FormDep, token_id: Id) -> Response:
    accounts.revoke_token(session, actor=auth.actor, token_id=token_id)
    session.commit()
    return redirect("/tokens?done=revoked")


# ------------------------------------------------------------------------------ a customer's
@router.get("/my/tokens")
def my_token_list(request: Request, session: SessionDep, auth: TenantDep) -> HTMLResponse:
    return _list(request, session, auth.actor, TENANT, True)


@router.get("/my/tokens/new")
def my_token_new(request: Request, auth: TenantDep) -> HTMLResponse:
    form = FormState(values={"scopes": "read"}, fields=TOKEN_FIELDS)
    return _new_page(request, TENANT, form, ["read"])


@router.post("/my/tokens/new", response_model=None)
def my_token_create(
    request: Request, session: SessionDep, auth: TenantDep, data: TenantFormDep
) -> Response:
    return _create(
        request, session, data, auth.actor, TENANT, auth.admin.username, auth.customer_id
    )


@router.post("/my/tokens/{token_id}/revoke")
def my_token_revoke(
    session: SessionDep, auth: TenantDep, data: TenantFormDep, token_id: Id
) -> Response:
    accounts.revoke_token(session, actor=auth.actor, token_id=token_id)
    session.commit()
    return redirect("/my/tokens?done=revoked")
