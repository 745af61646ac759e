"""The scanning pages: a domain's (its policy, own values and the rest inherited, its allow
and block lists, its latest rejections with their reason: "why was this refused?") and a
customer's (its policy, the defaults of its domains, and what each of its domains ends up
with)."""

from __future__ import annotations

import math
from types import EllipsisType

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app.config import Settings
from app.errors import ValidationError
from app.services import customers, domains, scan_log
from app.services import scan_policy as policies
from app.services.scan_policy import PolicyChange
from web.deps import SessionDep
from web.params import Id
from web.portal.auth import AdminDep, AuthDep, FormDep
from web.portal.common import redirect
from web.portal.forms import FormState, PostForm, saving
from web.portal.render import render

router = APIRouter()
POLICY_FIELDS = ("reject_score", "tag_score", "subject_tag", "greylisting")
LIST_FIELDS = ("list", "value")


def _score(text: str, field: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValidationError("enter a number, or leave empty to inherit", field=field) from None
    if not math.isfinite(value):
        raise ValidationError("enter a finite number", field=field)
    return value


def _own_values(own: dict[str, object]) -> dict[str, str]:
    values = {k: "" if v is None else str(v) for k, v in own.items()}
    values["greylisting"] = {None: "", True: "on", False: "off"}[own["greylisting"]]  # type: ignore[index]
    return values


def _change(data: PostForm) -> PolicyChange:
    """The policy form's fields (empty: inherit); ValidationError names the bad field."""
    tag_text = data.text("subject_tag")
    greylisting: bool | None | EllipsisType = {"": None, "on": True, "off": False}.get(
        data.text("greylisting"), ...
    )
    if greylisting is ...:
        raise ValidationError("choose on, off or inherit", field="greylisting")
    return PolicyChange(
        reject_score=_score(data.text("reject_score"), "reject_score"),
        tag_score=_score(data.text("tag_score"), "tag_score"),
        subject_tag=tag_text if tag_text.strip() else None,
        greylisting=greylisting,
    )


def _save_policy(
    session: SessionDep, auth: AdminDep, data: FormDep, *, scope: policies.Scope, scope_id: int
) -> FormState:
    """Save a customer's or a domain's own policy; a bad value is a form error, nothing saved."""
    form = FormState(values=data.values(), fields=POLICY_FIELDS)
    with saving(session, form, default_field="reject_score"):
        policies.set_override(
            session, actor=auth.actor, scope=scope, scope_id=scope_id, change=_change(data)
        )
    return form


def _page(
    request: Request,
    session: SessionDep,
    domain_id: int,
    *,
    policy_form: FormState | None = None,
    list_form: FormState | None = None,
    status: int = 200,
) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    domain = domains.get_domain(session, domain_id=domain_id)
    effective = policies.domain_policy(
        session, domain_id=domain_id, defaults=policies.defaults_from(settings)
    )
    own = policies.own_override(session, scope="domain", scope_id=domain_id)
    if policy_form is None:
        policy_form = FormState(values=_own_values(own), fields=POLICY_FIELDS)
    return render(
        request,
        "domains/scanning.html",
        {
            "domain": domain,
            "effective": effective,
            "own": own,
            "policy_form": policy_form,
            "list_form": list_form or FormState(values={"list": "allow"}, fields=LIST_FIELDS),
            "entries": policies.list_entries(session, domain_id=domain_id),
            "rejections": scan_log.recent(session, domain_id=domain_id),
            "scanning_on": bool(settings.scan_rspamd_address or settings.scan_clamd_address),
        },
        status=status,
    )


@router.get("/domains/{domain_id}/scanning")
def domain_scanning(
    request: Request, session: SessionDep, auth: AuthDep, domain_id: Id
) -> HTMLResponse:
    return _page(request, session, domain_id)


@router.post("/domains/{domain_id}/scanning", response_model=None)
def domain_scanning_save(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep, domain_id: Id
) -> Response:
    domains.get_domain(session, domain_id=domain_id)
    form = _save_policy(session, auth, data, scope="domain", scope_id=domain_id)
    if not form.ok:
        return _page(request, session, domain_id, policy_form=form, status=422)
    return redirect(f"/domains/{domain_id}/scanning?done=saved")


def _customer_page(
    request: Request,
    session: SessionDep,
    customer_id: int,
    *,
    policy_form: FormState | None = None,
    status: int = 200,
) -> HTMLResponse:
    settings: Settings = request.app.state.settings
    customer = customers.get_customer(session, customer_id=customer_id)
    defaults = policies.defaults_from(settings)
    own = policies.own_override(session, scope="customer", scope_id=customer_id)
    if policy_form is None:
        policy_form = FormState(values=_own_values(own), fields=POLICY_FIELDS)
    rows = []
    for domain in domains.list_domains(session, customer_id=customer_id, limit=500):
        domain_own = policies.own_override(session, scope="domain", scope_id=domain.id)
        effective = policies.domain_policy(session, domain_id=domain.id, defaults=defaults)
        overrides = [name for name, value in domain_own.items() if value is not None]
        rows.append((domain, effective, overrides))
    return render(
        request,
        "customers/scanning.html",
        {
            "customer": customer,
            "platform": defaults,
            "effective": policies.customer_policy(
                session, customer_id=customer_id, defaults=defaults
            ),
            "own": own,
            "policy_form": policy_form,
            "domain_rows": rows,
            "scanning_on": bool(settings.scan_rspamd_address or settings.scan_clamd_address),
        },
        status=status,
    )


@router.get("/customers/{customer_id}/scanning")
def customer_scanning(
    request: Request, session: SessionDep, auth: AuthDep, customer_id: Id
) -> HTMLResponse:
    return _customer_page(request, session, customer_id)


@router.post("/customers/{customer_id}/scanning", response_model=None)
def customer_scanning_save(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep, customer_id: Id
) -> Response:
    """Save the customer's own policy: the defaults of every domain of it that does not set
    the field itself. A bad value is a form error (422) and nothing is saved."""
    customers.get_customer(session, customer_id=customer_id)
    form = _save_policy(session, auth, data, scope="customer", scope_id=customer_id)
    if not form.ok:
        return _customer_page(request, session, customer_id, policy_form=form, status=422)
    return redirect(f"/customers/{customer_id}/scanning?done=saved")


@router.post("/domains/{domain_id}/scanning/list", response_model=None)
def domain_scanning_list_add(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep, domain_id: Id
) -> Response:
    domains.get_domain(session, domain_id=domain_id)
    form = FormState(values=data.values(), fields=LIST_FIELDS)
    with saving(session, form, default_field="value"):
        list_name = data.text("list")
        if list_name not in ("allow", "block"):
            raise ValidationError("choose the allow or the block list", field="list")
        policies.add_list_entry(
            session,
            actor=auth.actor,
            domain_id=domain_id,
            list_name=list_name,  # type: ignore[arg-type]
            value=data.text("value"),
        )
    if not form.ok:
        return _page(request, session, domain_id, list_form=form, status=422)
    return redirect(f"/domains/{domain_id}/scanning?done=added")


@router.post("/domains/{domain_id}/scanning/list/remove", response_model=None)
def domain_scanning_list_remove(
    session: SessionDep, auth: AdminDep, data: FormDep, domain_id: Id
) -> Response:
    list_name = data.text("list")
    if list_name not in ("allow", "block"):
        raise ValidationError("choose the allow or the block list", field="list")
    policies.remove_list_entry(
        session,
        actor=auth.actor,
        domain_id=domain_id,
        list_name=list_name,  # type: ignore[arg-type]
        value=data.text("value"),
    )
    session.commit()
    return redirect(f"/domains/{domain_id}/scanning?done=removed")
