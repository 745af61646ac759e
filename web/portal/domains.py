"""Domain pages: list and filters, create, limits, suspend/resume, catch-all, alias domains,
the DNS records to publish (MX, SPF, DKIM, DMARC) with the DKIM keys, and delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import MailhostError, NotFoundError, ValidationError
from app.models import DOMAIN_RELAY, Domain, Mailbox
from app.services import customers, domains, mailboxes, removal
from app.services import dkim as dkim_service
from app.services.addresses import domain_to_unicode
from app.services.dkim import DnsPolicy
from web.deps import SessionDep, StoreDep
from web.params import Id, SearchText, is_id
from web.portal.auth import AdminDep, AuthDep, FormDep
from web.portal.common import (
    PAGE_SIZE,
    done_after_delete,
    redirect,
    split_page,
)
from web.portal.forms import FormState, optional_int, optional_size, saving, size_text
from web.portal.render import render

router = APIRouter()

CREATE_FIELDS = ("name", "customer", "max_mailboxes", "default_quota_bytes", "total_quota_bytes")
LIMIT_FIELDS = ("max_mailboxes", "default_quota_bytes", "total_quota_bytes")
DKIM_FIELDS = ("selector", "algorithm")


def _policy(request: Request) -> DnsPolicy:
    return DnsPolicy.from_settings(request.app.state.settings)


@router.get("/domains")
def domain_list(
    request: Request,
    session: SessionDep,
    auth: AuthDep,
    q: SearchText = "",
    status: str = "",
    customer: Id | None = None,
    after: Id | None = None,
) -> HTMLResponse:
    rows = domains.list_domains(
        session,
        customer_id=customer,
        search=q.strip() or None,
        status=status or None,
        after_id=after,
        limit=PAGE_SIZE + 1,
    )
    page, next_after = split_page(rows)
    customer_ids = {d.customer_id for d in page}
    names: dict[int, str] = {}
    if customer_ids:
        from app.models import Customer

        names = dict(
            session.execute(
                select(Customer.id, Customer.name).where(Customer.id.in_(customer_ids))
            ).all()
        )
    counts: dict[int, int] = {}
    if page:
        counts = {
            domain_id: n
            for domain_id, n in session.execute(
                select(Mailbox.domain_id, func.count())
                .where(Mailbox.domain_id.in_([d.id for d in page]))
                .group_by(Mailbox.domain_id)
            )
        }
    return render(
        request,
        "domains/list.html",
        {
            "domains": page,
            "customer_names": names,
            "mailbox_counts": counts,
            "q": q,
            "status": status,
            "customer": customer,
            "next_after": next_after,
        },
    )


def _customer_from_text(session: Session, text: str) -> int:
    text = text.strip().lstrip("#")
    if not text:
        raise ValidationError("choose the customer (name or number)", field="customer")
    try:
        if text.isdigit():
            if not is_id(text):
                raise NotFoundError(f"no customer {text}")
            return customers.get_customer(session, customer_id=int(text)).id
        return customers.get_customer_by_name(session, name=text).id
    except NotFoundError:
        raise ValidationError(f"no customer {text!r}", field="customer") from None


@router.get("/domains/new")
def domain_new(
    request: Request, session: SessionDep, auth: AdminDep, customer: Id | None = None
) -> HTMLResponse:
    values = {}
    if customer is not None:
        values["customer"] = customers.get_customer(session, customer_id=customer).name
    form = FormState(values=values, fields=CREATE_FIELDS)
    return render(request, "domains/new.html", {"form": form})


@router.post("/domains/new", response_model=None)
def domain_create(request: Request, session: SessionDep, auth: AdminDep, data: FormDep) -> Response:
    form = FormState(values=data.values(), fields=CREATE_FIELDS)
    with saving(session, form, default_field="name"):
        customer_id = _customer_from_text(session, data.text("customer"))
        domain = domains.create_domain(
            session,
            actor=auth.actor,
            customer_id=customer_id,
            name=data.text("name"),
            max_mailboxes=optional_int(data.text("max_mailboxes"), field_name="max_mailboxes"),
            default_quota_bytes=optional_size(
                data.text("default_quota_bytes"), field_name="default_quota_bytes"
            ),
            total_quota_bytes=optional_size(
                data.text("total_quota_bytes"), field_name="total_quota_bytes"
            ),
        )
    if not form.ok:
        return render(request, "domains/new.html", {"form": form}, status=422)
    return redirect(f"/domains/{domain.id}?done=created")


def _detail(
    request: Request, session: SessionDep, domain: Domain, *, status: int = 200, **forms: Any
) -> HTMLResponse:
    limits = forms.pop("limits", None) or FormState(
        values={
            "max_mailboxes": "" if domain.max_mailboxes is None else str(domain.max_mailboxes),
            "default_quota_bytes": size_text(domain.default_quota_bytes),
            "total_quota_bytes": size_text(domain.total_quota_bytes),
        },
        fields=LIMIT_FIELDS,
    )
    catchall = forms.pop("catchall", None) or FormState(
        values={"target": domain.catchall_target or ""}, fields=("target",)
    )
    alias_form = forms.pop("alias_form", None) or FormState(fields=("alias_name",))
    dkim_form = forms.pop("dkim_form", None) or FormState(
        values={"algorithm": "rsa"}, fields=DKIM_FIELDS
    )
    allocated = session.scalar(
        select(func.coalesce(func.sum(Mailbox.quota_bytes), 0)).where(
            Mailbox.domain_id == domain.id
        )
    )
    return render(
        request,
        "domains/detail.html",
        {
            "domain": domain,
            "unicode_name": domain_to_unicode(domain.name),
            "customer": domain.customer,
            "mailbox_count": mailboxes.count_mailboxes(session, domain_id=domain.id),
            "allocated": allocated or 0,
            "domain_aliases": sorted(domain.domain_aliases, key=lambda a: a.name),
            "dns": dkim_service.recommended_records(
                session, domain_id=domain.id, policy=_policy(request)
            ),
            "dkim_keys": dkim_service.list_keys(session, domain_id=domain.id),
            "dkim_form": dkim_form,
            "limits": limits,
            "catchall": catchall,
            "alias_form": alias_form,
        },
        status=status,
    )


@router.get("/domains/{domain_id}")
def domain_detail(request: Request, session: SessionDep, auth: AuthDep, domain_id: Id) -> Response:
    domain = domains.get_domain(session, domain_id=domain_id)
    if domain.kind == DOMAIN_RELAY:  # its page is the relay page (web/portal/relay.py)
        return redirect(f"/relay/{domain_id}")
    return _detail(request, session, domain)


@router.post("/domains/{domain_id}/limits", response_model=None)
def domain_limits(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep, domain_id: Id
) -> Response:
    domain = domains.get_domain(session, domain_id=domain_id)
    form = FormState(values=data.values(), fields=LIMIT_FIELDS)
    with saving(session, form, default_field="max_mailboxes"):
        max_mailboxes = optional_int(data.text("max_mailboxes"), field_name="max_mailboxes")
        total = optional_size(data.text("total_quota_bytes"), field_name="total_quota_bytes")
        domains.update_domain(
            session,
            actor=auth.actor,
            domain_id=domain_id,
            max_mailboxes=max_mailboxes,
            default_quota_bytes=optional_size(
                data.text("default_quota_bytes"), field_name="default_quota_bytes"
            ),
            total_quota_bytes=total,
            clear_max_mailboxes=max_mailboxes is None,
            clear_total_quota=total is None,
        )
    if not form.ok:
        domain = domains.get_domain(session, domain_id=domain_id)
        return _detail(request, session, domain, status=422, limits=form)
    return redirect(f"/domains/{domain_id}?done=saved")


@router.post("/domains/{domain_id}/status")
def domain_status(session: SessionDep, auth: AuthDep, data: FormDep, domain_id: Id) -> Response:
    status = data.text("status")
    domains.set_domain_status(session, actor=auth.actor, domain_id=domain_id, status=status)
    session.commit()
    return redirect(f"/domains/{domain_id}?done={status}")


@router.post("/domains/{domain_id}/catchall", response_model=None)
def domain_catchall(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep, domain_id: Id
) -> Response:
    domains.get_domain(session, domain_id=domain_id)
    form = FormState(values=data.values(), fields=("target",))
    with saving(session, form, default_field="target"):
        domains.set_catchall(
            session, actor=auth.actor, domain_id=domain_id, target=data.text("target") or None
        )
    if not form.ok:
        domain = domains.get_domain(session, domain_id=domain_id)
        return _detail(request, session, domain, status=422, catchall=form)
    return redirect(f"/domains/{domain_id}?done=saved")


@router.post("/domains/{domain_id}/aliases", response_model=None)
def domain_alias_add(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep, domain_id: Id
) -> Response:
    domains.get_domain(session, domain_id=domain_id)
    form = FormState(values=data.values(), fields=("alias_name",))
    with saving(session, form, default_field="alias_name"):
        domains.add_domain_alias(
            session, actor=auth.actor, domain_id=domain_id, alias_name=data.text("alias_name")
        )
    if not form.ok:
        domain = domains.get_domain(session, domain_id=domain_id)
        return _detail(request, session, domain, status=422, alias_form=form)
    return redirect(f"/domains/{domain_id}?done=created")


@router.post("/domains/{domain_id}/aliases/remove")
def domain_alias_remove(
    session: SessionDep, auth: AdminDep, data: FormDep, domain_id: Id
) -> Response:
    domain = domains.get_domain(session, domain_id=domain_id)
    name = data.text("alias_name")
    if name not in {a.name for a in domain.domain_aliases}:
        raise NotFoundError(f"{name!r} is not an alias of this domain")
    domains.remove_domain_alias(session, actor=auth.actor, alias_name=name)
    session.commit()
    return redirect(f"/domains/{domain_id}?done=deleted")


@router.post("/domains/{domain_id}/dkim", response_model=None)
def domain_dkim_generate(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep, domain_id: Id
) -> Response:
    """A new signing key; with one already active this is a rotation (the old stays published)."""
    domains.get_domain(session, domain_id=domain_id)
    form = FormState(values=data.values(), fields=DKIM_FIELDS)
    with saving(session, form, default_field="selector"):
        dkim_service.generate_key(
            session,
            actor=auth.actor,
            domain_id=domain_id,
            selector=data.text("selector") or None,
            algorithm=data.text("algorithm") or "rsa",
        )
    if not form.ok:
        domain = domains.get_domain(session, domain_id=domain_id)
        return _detail(request, session, domain, status=422, dkim_form=form)
    return redirect(f"/domains/{domain_id}?done=created#dns")


@router.post("/domains/{domain_id}/dkim/retire")
def domain_dkim_retire(
    session: SessionDep, auth: AdminDep, data: FormDep, domain_id: Id
) -> Response:
    dkim_service.retire_key(
        session, actor=auth.actor, domain_id=domain_id, selector=data.text("selector")
    )
    session.commit()
    return redirect(f"/domains/{domain_id}?done=saved#dns")


@router.get("/domains/{domain_id}/delete")
def domain_delete_form(
    request: Request, session: SessionDep, auth: AdminDep, domain_id: Id
) -> HTMLResponse:
    domain = domains.get_domain(session, domain_id=domain_id)
    return render(
        request,
        "domains/delete.html",
        {
            "domain": domain,
            "mailbox_count": mailboxes.count_mailboxes(session, domain_id=domain_id),
            "error": None,
        },
    )


@router.post("/domains/{domain_id}/delete", response_model=None)
def domain_delete(
    request: Request,
    session: SessionDep,
    store: StoreDep,
    auth: AdminDep,
    data: FormDep,
    domain_id: Id,
) -> Response:
    domain = domains.get_domain(session, domain_id=domain_id)
    refs = removal.refs_of_domain(session, domain_id=domain_id)
    try:
        domains.delete_domain(
            session, actor=auth.actor, domain_id=domain_id, cascade=data.checked("cascade")
        )
        session.commit()
    except MailhostError as exc:
        session.rollback()
        return render(
            request,
            "domains/delete.html",
            {"domain": domain, "mailbox_count": len(refs), "error": exc.message},
            status=409,
        )
    leftovers = removal.remove_maildirs(store=store, refs=refs)
    return redirect(f"/domains?done={done_after_delete(leftovers)}")
