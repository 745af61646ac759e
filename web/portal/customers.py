"""Customer pages: list and search, create, edit, suspend/resume, delete (with cascade)."""

from __future__ import annotations

from decimal import Decimal

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select

from app.errors import MailhostError
from app.models import Domain, Mailbox
from app.services import customers, domains, removal
from web.deps import SessionDep, StoreDep
from web.params import Id, SearchText
from web.portal.auth import AdminDep, AuthDep, FormDep
from web.portal.charts_pages import customer_charts
from web.portal.common import (
    PAGE_SIZE,
    done_after_delete,
    parse_decimal,
    redirect,
    split_page,
)
from web.portal.forms import FormState, PostForm, saving
from web.portal.render import render

router = APIRouter()

FIELDS = ("name", "price_per_mailbox", "price_per_relay_domain", "currency")


@router.get("/customers")
def customer_list(
    request: Request,
    session: SessionDep,
    auth: AuthDep,
    q: SearchText = "",
    status: str = "",
    after: Id | None = None,
) -> HTMLResponse:
    rows = customers.list_customers(
        session,
        actor=auth.actor,
        search=q.strip() or None,
        status=status or None,
        after_id=after,
        limit=PAGE_SIZE + 1,
    )
    page, next_after = split_page(rows)
    return render(
        request,
        "customers/list.html",
        {
            "customers": page,
            "q": q,
            "status": status,
            "next_after": next_after,
        },
    )


def _relay_price(data: PostForm) -> Decimal | None:
    """The relay-domain price field; empty (or a form without it) leaves the price alone."""
    text = data.text("price_per_relay_domain")
    if not text:
        return None
    return parse_decimal(text, field_name="price_per_relay_domain")


@router.get("/customers/new")
def customer_new(request: Request, auth: AdminDep) -> HTMLResponse:
    form = FormState(
        values={"currency": "EUR", "price_per_mailbox": "0", "price_per_relay_domain": "0"},
        fields=FIELDS,
    )
    return render(request, "customers/form.html", {"form": form, "customer": None})


@router.post("/customers/new", response_model=None)
def customer_create(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep
) -> Response:
    form = FormState(values=data.values(), fields=FIELDS)
    with saving(session, form, default_field="name"):
        customer = customers.create_customer(
            session,
            actor=auth.actor,
            name=data.text("name"),
            price_per_mailbox=parse_decimal(
                data.text("price_per_mailbox"), field_name="price_per_mailbox"
            ),
            currency=data.text("currency").upper() or "EUR",
            price_per_relay_domain=_relay_price(data) or Decimal("0"),
        )
    if not form.ok:
        return render(request, "customers/form.html", {"form": form, "customer": None}, status=422)
    return redirect(f"/customers/{customer.id}?done=created")


@router.get("/customers/{customer_id}")
def customer_detail(
    request: Request, session: SessionDep, auth: AuthDep, customer_id: Id
) -> HTMLResponse:
    customer = customers.get_customer(session, customer_id=customer_id)
    domain_rows = domains.list_domains(session, customer_id=customer_id, limit=500)
    counts = dict(
        session.execute(
            select(Mailbox.domain_id, func.count())
            .join(Domain, Mailbox.domain_id == Domain.id)
            .where(Domain.customer_id == customer_id)
            .group_by(Mailbox.domain_id)
        ).all()
    )
    return render(
        request,
        "customers/detail.html",
        {
            "customer": customer,
            "domains": domain_rows,
            "mailbox_counts": counts,
            "mailbox_total": sum(counts.values()),
            **customer_charts(session, customer_id=customer_id),
        },
    )


@router.get("/customers/{customer_id}/edit")
def customer_edit_form(
    request: Request, session: SessionDep, auth: AdminDep, customer_id: Id
) -> HTMLResponse:
    customer = customers.get_customer(session, customer_id=customer_id)
    form = FormState(
        values={
            "name": customer.name,
            "price_per_mailbox": str(customer.price_per_mailbox),
            "price_per_relay_domain": str(customer.price_per_relay_domain),
            "currency": customer.currency,
        },
        fields=FIELDS,
    )
    return render(request, "customers/form.html", {"form": form, "customer": customer})


@router.post("/customers/{customer_id}/edit", response_model=None)
def customer_edit(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep, customer_id: Id
) -> Response:
    customer = customers.get_customer(session, customer_id=customer_id)
    form = FormState(values=data.values(), fields=FIELDS)
    with saving(session, form, default_field="name"):
        customers.update_customer(
            session,
            actor=auth.actor,
            customer_id=customer_id,
            name=data.text("name"),
            price_per_mailbox=parse_decimal(
                data.text("price_per_mailbox"), field_name="price_per_mailbox"
            ),
            currency=data.text("currency").upper(),
            price_per_relay_domain=_relay_price(data),
        )
    if not form.ok:
        return render(
            request, "customers/form.html", {"form": form, "customer": customer}, status=422
        )
    return redirect(f"/customers/{customer_id}?done=saved")


@router.post("/customers/{customer_id}/status")
def customer_status(
    session: SessionDep, auth: AuthDep, data: FormDep, customer_id: Id
) -> RedirectResponse:
    status = data.text("status")
    customers.set_customer_status(session, actor=auth.actor, customer_id=customer_id, status=status)
    session.commit()
    return redirect(f"/customers/{customer_id}?done={status}")


@router.get("/customers/{customer_id}/delete")
def customer_delete_form(
    request: Request, session: SessionDep, auth: AdminDep, customer_id: Id
) -> HTMLResponse:
    customer = customers.get_customer(session, customer_id=customer_id)
    domain_count = session.scalar(
        select(func.count(Domain.id)).where(Domain.customer_id == customer_id)
    )
    return render(
        request,
        "customers/delete.html",
        {"customer": customer, "domain_count": domain_count, "error": None},
    )


@router.post("/customers/{customer_id}/delete", response_model=None)
def customer_delete(
    request: Request,
    session: SessionDep,
    store: StoreDep,
    auth: AdminDep,
    data: FormDep,
    customer_id: Id,
) -> Response:
    customer = customers.get_customer(session, customer_id=customer_id)
    domain_ids = list(session.scalars(select(Domain.id).where(Domain.customer_id == customer_id)))
    refs = removal.refs_of_customer(session, customer_id=customer_id)
    try:
        customers.delete_customer(
            session, actor=auth.actor, customer_id=customer_id, cascade=data.checked("cascade")
        )
        session.commit()
    except MailhostError as exc:
        session.rollback()
        return render(
            request,
            "customers/delete.html",
            {"customer": customer, "domain_count": len(domain_ids), "error": exc.message},
            status=409,
        )
    leftovers = removal.remove_maildirs(store=store, refs=refs)
    return redirect(f"/customers?done={done_after_delete(leftovers)}")
