"""Operators (portal users): create, change password, delete (API tokens: token_pages.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app.errors import MailhostError, ValidationError
from app.models import ROLE_ADMIN, ROLE_SUPPORT, Operator
from app.services import accounts
from app.services.mailboxes import generate_password
from web.deps import SessionDep
from web.params import Id
from web.portal.auth import AdminDep, AuthDep, FormDep
from web.portal.common import redirect
from web.portal.errors import not_found
from web.portal.forms import FormState, saving
from web.portal.render import render

router = APIRouter()

OPERATOR_FIELDS = ("username", "password", "role")


@router.get("/operators")
def operator_list(request: Request, session: SessionDep, auth: AuthDep) -> HTMLResponse:
    return render(
        request,
        "operators/list.html",
        {"operators": accounts.list_operators(session, actor=auth.actor)},
    )


@router.get("/operators/new")
def operator_new(request: Request, auth: AdminDep) -> HTMLResponse:
    form = FormState(values={"role": ROLE_SUPPORT}, fields=OPERATOR_FIELDS)
    return render(
        request, "operators/new.html", {"form": form, "roles": (ROLE_ADMIN, ROLE_SUPPORT)}
    )


@router.post("/operators/new", response_model=None)
def operator_create(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep
) -> Response:
    form = FormState(values=data.values(), fields=OPERATOR_FIELDS)
    with saving(session, form, default_field="username"):
        if data.get("password") != data.get("password_confirm"):
            raise ValidationError("the two passwords differ", field="password")
        accounts.create_operator(
            session,
            actor=auth.actor,
            username=data.text("username"),
            password=data.get("password"),
            role=data.text("role"),
        )
    if not form.ok:
        return render(
            request,
            "operators/new.html",
            {"form": form, "roles": (ROLE_ADMIN, ROLE_SUPPORT)},
            status=422,
        )
    return redirect("/operators?done=created")


def _operator(session: SessionDep, operator_id: int) -> Operator:
    operator = session.get(Operator, operator_id)
    if operator is None:
        raise not_found("operator")
    return operator


@router.get("/operators/{operator_id}/delete")
def operator_delete_form(
    request: Request, session: SessionDep, auth: AdminDep, operator_id: Id
) -> HTMLResponse:
    return render(
        request,
        "operators/delete.html",
        {"operator": _operator(session, operator_id), "error": None},
    )


@router.post("/operators/{operator_id}/delete", response_model=None)
def operator_delete(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep, operator_id: Id
) -> Response:
    operator = _operator(session, operator_id)
    try:
        accounts.delete_operator(session, actor=auth.actor, operator_id=operator_id)
        session.commit()
    except MailhostError as exc:
        session.rollback()
        return render(
            request,
            "operators/delete.html",
            {"operator": operator, "error": exc.message},
            status=409,
        )
    return redirect("/operators?done=deleted")


@router.get("/operators/{operator_id}/password", response_model=None)
def operator_password_form(
    request: Request, session: SessionDep, auth: AdminDep, operator_id: Id
) -> Response:
    if operator_id == auth.me.id:
        return redirect("/account")  # your own: the current password is asked there
    return render(request, "operators/password.html", {"operator": _operator(session, operator_id)})


@router.post("/operators/{operator_id}/password", response_model=None)
def operator_password_reset(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep, operator_id: Id
) -> Response:
    """An admin resets another operator's password (forgotten, or a leak suspected): a
    generated one, shown once; the operator is logged out everywhere."""
    if operator_id == auth.me.id:
        return redirect("/account")
    operator = _operator(session, operator_id)
    password = generate_password()
    accounts.set_operator_password(
        session, actor=auth.actor, operator_id=operator_id, password=password
    )
    session.commit()  # set_operator_password ended the operator's sessions everywhere
    response = render(
        request, "operators/password_shown.html", {"operator": operator, "password": password}
    )
    response.headers["Cache-Control"] = "no-store"
    return response
