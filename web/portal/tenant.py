"""A customer administrator's own pages, under ``/my``: their customer's domains, mailboxes,
aliases, catch-alls, relay-domain recipients (to see), usage and billing preview, their
audit view and their administrators.

Every lookup passes ``auth.actor`` (which carries the customer) to the services, which check
it in one place (app/services/tenancy.py): another customer's id is "not found" (404). The
pages offer only what a customer may do; the services refuse the rest on their own.
"""

from __future__ import annotations

import datetime as dt
import re

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import ValidationError
from app.maildir import MailboxRef, MaildirStore
from app.models import DOMAIN_RELAY, AuditEntry, Domain, Mailbox, utcnow
from app.services import (
    aliases,
    billing,
    customer_admins,
    customers,
    domains,
    mailboxes,
    relay,
    relay_recipients,
    removal,
)
from web.deps import SessionDep, StoreDep
from web.params import Id, SearchText
from web.portal.auth import SESSION_COOKIE
from web.portal.common import PAGE_SIZE, done_after_delete, redirect, split_page
from web.portal.forms import FormState, optional_size, saving, size_text
from web.portal.render import render
from web.portal.tenant_auth import TenantAuth, TenantDep, TenantFormDep

router = APIRouter(prefix="/my")

MAILBOX_FIELDS = ("address", "password", "quota_bytes", "pop3_enabled")
ALIAS_FIELDS = ("address", "targets")
ADMIN_FIELDS = ("username", "password")
RELAY_PAGE = 500  # relay recipients shown at once (a search narrows them)


def _targets(text: str) -> list[str]:
    return [t for t in re.split(r"[\s,;]+", text) if t]


def billing_preview(
    session: Session, store: MaildirStore, customer_id: int, now: dt.datetime | None = None
) -> billing.CustomerUsage | None:
    """The current month so far, computed as the billing API computes it (same service)."""
    today = (now or utcnow()).date()
    start, end = billing.month_period(f"{today.year:04d}-{today.month:02d}")
    report = billing.usage_report(
        session, start=start, end=end, customer_id=customer_id, store=store
    )
    return report.customers[0] if report.customers else None


@router.get("")
def home(request: Request, session: SessionDep, store: StoreDep, auth: TenantDep) -> HTMLResponse:
    customer = customers.get_customer(session, customer_id=auth.customer_id, actor=auth.actor)
    rows = domains.list_domains(session, customer_id=auth.customer_id, limit=500)
    counts = dict(
        session.execute(
            select(Mailbox.domain_id, func.count())
            .join(Domain, Mailbox.domain_id == Domain.id)
            .where(Domain.customer_id == auth.customer_id)
            .group_by(Mailbox.domain_id)
        ).all()
    )
    return render(
        request,
        "my/home.html",
        {
            "customer": customer,
            "domains": rows,
            "mailbox_counts": counts,
            "preview": billing_preview(session, store, auth.customer_id),
        },
    )


@router.get("/domains/{domain_id}")
def domain_detail(
    request: Request, session: SessionDep, auth: TenantDep, domain_id: Id, q: SearchText = ""
) -> HTMLResponse:
    domain = domains.get_domain(session, domain_id=domain_id, actor=auth.actor)
    count, quota_sum = domains.usage_of(session, domain.id)
    context: dict[str, object] = {"domain": domain, "mailbox_count": count, "quota_sum": quota_sum}
    if domain.kind == DOMAIN_RELAY:
        # Read-only: the ISP manages relay domains (tenancy.isp_only), the customer sees
        # which recipients its own mail server is relayed mail for.
        context["relay"] = relay.get_relay(session, domain_id=domain.id, actor=auth.actor)
        context["recipients"] = relay_recipients.list_recipients(
            session, domain_id=domain.id, actor=auth.actor, search=q or None, limit=RELAY_PAGE
        )
        context["recipient_count"] = relay_recipients.count_recipients(session, domain_id=domain.id)
        context["q"] = q
    return render(request, "my/domain.html", context)


# ------------------------------------------------------------------------------ mailboxes
@router.get("/mailboxes")
def mailbox_list(
    request: Request,
    session: SessionDep,
    store: StoreDep,
    auth: TenantDep,
    q: SearchText = "",
    domain: Id | None = None,
    after: Id | None = None,
) -> HTMLResponse:
    scope = None
    if domain is not None:
        scope = domains.get_domain(session, domain_id=domain, actor=auth.actor)
    rows = mailboxes.list_mailboxes(
        session,
        domain_id=domain,
        customer_id=auth.customer_id,
        search=q.strip() or None,
        after_id=after,
        limit=PAGE_SIZE + 1,
    )
    page, next_after = split_page(rows)
    usage = {m.id: store.usage(MailboxRef.of(m)) for m in page}
    return render(
        request,
        "my/mailboxes.html",
        {"mailboxes": page, "usage": usage, "scope": scope, "q": q, "next_after": next_after},
    )


@router.get("/mailboxes/new")
def mailbox_new(request: Request, session: SessionDep, auth: TenantDep) -> HTMLResponse:
    form = FormState(values={"pop3_enabled": "on"}, fields=MAILBOX_FIELDS)
    return render(request, "my/mailbox_new.html", {"form": form})


@router.post("/mailboxes/new", response_model=None)
def mailbox_create(
    request: Request, session: SessionDep, auth: TenantDep, data: TenantFormDep
) -> Response:
    form = FormState(values=data.values(), fields=MAILBOX_FIELDS)
    with saving(session, form, default_field="address"):
        mailbox = mailboxes.create_mailbox(
            session,
            actor=auth.actor,
            address=data.text("address"),
            password=data.get("password"),
            quota_bytes=optional_size(data.text("quota_bytes"), field_name="quota_bytes"),
            pop3_enabled=data.checked("pop3_enabled"),
        )
    if not form.ok:
        return render(request, "my/mailbox_new.html", {"form": form}, status=422)
    return redirect(f"/my/mailboxes/{mailbox.id}?done=created")


def _mailbox_page(
    request: Request,
    store: MaildirStore,
    mailbox: Mailbox,
    *,
    form: FormState | None = None,
    status: int = 200,
) -> HTMLResponse:
    form = form or FormState(
        values={
            "quota_bytes": size_text(mailbox.quota_bytes),
            "pop3_enabled": "on" if mailbox.pop3_enabled else "",
        },
        fields=("quota_bytes", "pop3_enabled", "password"),
    )
    return render(
        request,
        "my/mailbox.html",
        {"mailbox": mailbox, "usage": store.usage(MailboxRef.of(mailbox)), "form": form},
        status=status,
    )


@router.get("/mailboxes/{mailbox_id}")
def mailbox_detail(
    request: Request, session: SessionDep, store: StoreDep, auth: TenantDep, mailbox_id: Id
) -> HTMLResponse:
    mailbox = mailboxes.get_mailbox(session, mailbox_id=mailbox_id, actor=auth.actor)
    return _mailbox_page(request, store, mailbox)


@router.post("/mailboxes/{mailbox_id}/settings", response_model=None)
def mailbox_settings(
    request: Request,
    session: SessionDep,
    store: StoreDep,
    auth: TenantDep,
    data: TenantFormDep,
    mailbox_id: Id,
) -> Response:
    mailboxes.get_mailbox(session, mailbox_id=mailbox_id, actor=auth.actor)
    form = FormState(values=data.values(), fields=("quota_bytes", "pop3_enabled", "password"))
    with saving(session, form, default_field="quota_bytes"):
        quota = optional_size(data.text("quota_bytes"), field_name="quota_bytes")
        if quota is None:
            raise ValidationError("enter a quota such as 2G or 500M", field="quota_bytes")
        mailboxes.update_mailbox(
            session,
            actor=auth.actor,
            mailbox_id=mailbox_id,
            quota_bytes=quota,
            pop3_enabled=data.checked("pop3_enabled"),
        )
        if data.get("password"):
            mailboxes.set_password(
                session, actor=auth.actor, mailbox_id=mailbox_id, password=data.get("password")
            )
    if not form.ok:
        mailbox = mailboxes.get_mailbox(session, mailbox_id=mailbox_id, actor=auth.actor)
        return _mailbox_page(request, store, mailbox, form=form, status=422)
    return redirect(f"/my/mailboxes/{mailbox_id}?done=saved")


@router.post("/mailboxes/{mailbox_id}/status")
def mailbox_status(
    session: SessionDep, auth: TenantDep, data: TenantFormDep, mailbox_id: Id
) -> Response:
    mailboxes.get_mailbox(session, mailbox_id=mailbox_id, actor=auth.actor)  # 404 before 400
    status = data.text("status")
    mailboxes.set_mailbox_status(session, actor=auth.actor, mailbox_id=mailbox_id, status=status)
    session.commit()
    return redirect(f"/my/mailboxes/{mailbox_id}?done={status}")


@router.post("/mailboxes/{mailbox_id}/delete")
def mailbox_delete(
    session: SessionDep, store: StoreDep, auth: TenantDep, data: TenantFormDep, mailbox_id: Id
) -> Response:
    mailboxes.get_mailbox(session, mailbox_id=mailbox_id, actor=auth.actor)
    refs = removal.refs_of_mailbox(session, mailbox_id=mailbox_id)
    mailboxes.delete_mailbox(session, actor=auth.actor, mailbox_id=mailbox_id)
    session.commit()
    leftovers = removal.remove_maildirs(store=store, refs=refs)
    return redirect(f"/my/mailboxes?done={done_after_delete(leftovers)}")


# ------------------------------------------------------------------------------ aliases
@router.get("/aliases")
def alias_list(
    request: Request,
    session: SessionDep,
    auth: TenantDep,
    q: SearchText = "",
    after: Id | None = None,
) -> HTMLResponse:
    rows = aliases.list_aliases(
        session,
        customer_id=auth.customer_id,
        search=q.strip() or None,
        after_id=after,
        limit=PAGE_SIZE + 1,
    )
    page, next_after = split_page(rows)
    return render(request, "my/aliases.html", {"aliases": page, "q": q, "next_after": next_after})


@router.post("/aliases/new", response_model=None)
def alias_create(
    request: Request, session: SessionDep, auth: TenantDep, data: TenantFormDep
) -> Response:
    form = FormState(values=data.values(), fields=ALIAS_FIELDS)
    with saving(session, form, default_field="address"):
        alias = aliases.create_alias(
            session,
            actor=auth.actor,
            address=data.text("address"),
            targets=_targets(data.get("targets")),
        )
    if not form.ok:
        return render(
            request,
            "my/aliases.html",
            {"aliases": [], "q": "", "next_after": None, "form": form},
            status=422,
        )
    return redirect(f"/my/aliases/{alias.id}?done=created")


@router.get("/aliases/{alias_id}")
def alias_detail(
    request: Request, session: SessionDep, auth: TenantDep, alias_id: Id
) -> HTMLResponse:
    alias = aliases.get_alias(session, alias_id=alias_id, actor=auth.actor)
    form = FormState(
        values={"targets": "\n".join(t.address for t in alias.targets)}, fields=("targets",)
    )
    return render(request, "my/alias.html", {"alias": alias, "form": form})


@router.post("/aliases/{alias_id}/targets", response_model=None)
def alias_targets(
    request: Request, session: SessionDep, auth: TenantDep, data: TenantFormDep, alias_id: Id
) -> Response:
    aliases.get_alias(session, alias_id=alias_id, actor=auth.actor)
    form = FormState(values=data.values(), fields=("targets",))
    with saving(session, form, default_field="targets"):
        aliases.set_alias_targets(
            session, actor=auth.actor, alias_id=alias_id, targets=_targets(data.get("targets"))
        )
    if not form.ok:
        alias = aliases.get_alias(session, alias_id=alias_id, actor=auth.actor)
        return render(request, "my/alias.html", {"alias": alias, "form": form}, status=422)
    return redirect(f"/my/aliases/{alias_id}?done=saved")


@router.post("/aliases/{alias_id}/delete")
def alias_delete(
    session: SessionDep, auth: TenantDep, data: TenantFormDep, alias_id: Id
) -> Response:
    aliases.delete_alias(session, actor=auth.actor, alias_id=alias_id)
    session.commit()
    return redirect("/my/aliases?done=deleted")


# ------------------------------------------------------------------------------ audit, admins
@router.get("/audit")
def audit_view(
    request: Request, session: SessionDep, auth: TenantDep, after: Id | None = None
) -> HTMLResponse:
    """What this customer's administrators did, newest first (``after``: older than it)."""
    query = select(AuditEntry).where(AuditEntry.customer_id == auth.customer_id)
    if after is not None:
        query = query.where(AuditEntry.id < after)
    rows = list(session.scalars(query.order_by(AuditEntry.id.desc()).limit(PAGE_SIZE + 1)))
    page, next_after = split_page(rows)
    return render(request, "my/audit.html", {"entries": page, "next_after": next_after})


def _admins_page(
    request: Request, session: SessionDep, auth: TenantAuth, form: FormState, status: int = 200
) -> HTMLResponse:
    rows = customer_admins.list_customer_admins(session, actor=auth.actor)
    return render(request, "my/admins.html", {"admins": rows, "form": form}, status=status)


@router.get("/admins")
def admin_list(request: Request, session: SessionDep, auth: TenantDep) -> HTMLResponse:
    return _admins_page(request, session, auth, FormState(fields=ADMIN_FIELDS))


@router.post("/admins/new", response_model=None)
def admin_create(
    request: Request, session: SessionDep, auth: TenantDep, data: TenantFormDep
) -> Response:
    form = FormState(values=data.values(), fields=ADMIN_FIELDS)
    with saving(session, form, default_field="username"):
        customer_admins.create_customer_admin(
            session,
            actor=auth.actor,
            customer_id=auth.customer_id,
            username=data.text("username"),
            password=data.get("password"),
        )
    if not form.ok:
        return _admins_page(request, session, auth, form, status=422)
    return redirect("/my/admins?done=created")


@router.post("/admins/{admin_id}/delete", response_model=None)
def admin_delete(
    request: Request, session: SessionDep, auth: TenantDep, data: TenantFormDep, admin_id: Id
) -> Response:
    customer_admins.delete_customer_admin(session, actor=auth.actor, admin_id=admin_id)
    session.commit()
    return redirect("/my/admins?done=deleted")


@router.post("/logout")
def logout(session: SessionDep, auth: TenantDep, data: TenantFormDep) -> Response:
    from app.services.audit import audit

    session.delete(auth.web_session)
    audit(
        session,
        actor=auth.actor,
        action="logout",
        object_type="customer_admin",
        object_id=auth.me.id,
        object_name=auth.me.username,
    )
    session.commit()
    response = redirect("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
