"""ISP staff managing a customer's own administrators: ``/customers/{id}/admins``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from app.errors import NotFoundError
from app.models import CustomerAdmin
from app.services import customer_admins, customers, totp
from web.deps import SessionDep
from web.params import Id
from web.portal.auth import AdminDep, AuthDep, FormDep
from web.portal.common import redirect
from web.portal.forms import FormState, saving
from web.portal.render import render

router = APIRouter()
FIELDS = ("username", "password")


def _page(
    request: Request, session: Session, customer_id: int, form: FormState, status: int = 200
) -> HTMLResponse:
    customer = customers.get_customer(session, customer_id=customer_id)
    rows = customer_admins.list_customer_admins(session, actor=None, customer_id=customer_id)
    enrolled = {
        a.id
        for a in rows
        if totp.is_enrolled(session, owner=totp.Owner("customer_admin", a.id, a.username))
    }
    return render(
        request,
        "customers/admins.html",
        {"customer": customer, "admins": rows, "enrolled": enrolled, "form": form},
        status=status,
    )


def _of_customer(session: Session, customer_id: int, admin_id: int) -> CustomerAdmin:
    customers.get_customer(session, customer_id=customer_id)
    admin = customer_admins.get_customer_admin(session, admin_id=admin_id)
    if admin.customer_id != customer_id:
        raise NotFoundError(f"no customer administrator with id {admin_id}", field="admin_id")
    return admin


@router.get("/customers/{customer_id}/admins")
def admin_list(
    request: Request, session: SessionDep, auth: AuthDep, customer_id: Id
) -> HTMLResponse:
    return _page(request, session, customer_id, FormState(fields=FIELDS))


@router.post("/customers/{customer_id}/admins/new", response_model=None)
def admin_create(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep, customer_id: Id
) -> Response:
    customers.get_customer(session, customer_id=customer_id)
    form = FormState(values=data.values(), fields=FIELDS)
    with saving(session, form, default_field="username"):
        customer_admins.create_customer_admin(
            session,
            actor=auth.actor,
            customer_id=customer_id,
            username=data.text("username"),
            password=data.get("password"),
        )
    if not form.ok:
        return _page(request, session, customer_id, form, status=422)
    return redirect(f"/customers/{customer_id}/admins?done=created")


@router.post("/customers/{customer_id}/admins/{admin_id}/delete")
def admin_delete(
    session: SessionDep, auth: AdminDep, data: FormDep, customer_id: Id, admin_id: Id
) -> Response:
    _of_customer(session, customer_id, admin_id)
    customer_admins.delete_customer_admin(session, actor=auth.actor, admin_id=admin_id)
    session.commit()
    return redirect(f"/customers/{customer_id}/admins?done=deleted")


@router.post("/customers/{customer_id}/admins/{admin_id}/totp-reset")
def admin_totp_reset(
    session: SessionDep, auth: AdminDep, data: FormDep, customer_id: Id, admin_id: Id
) -> Response:
    admin = _of_customer(session, customer_id, admin_id)
    totp.reset(
        session, actor=auth.actor, owner=totp.Owner("customer_admin", admin.id, admin.username)
    )
    session.commit()
    return redirect(f"/customers/{customer_id}/admins?done=saved")
