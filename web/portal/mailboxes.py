"""Mailbox pages: global and per-domain lists with search and keyset paging, create
(password typed or generated and shown once), password, quota, POP3, suspend/resume, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app.errors import ValidationError
from app.maildir import MailboxRef, MaildirStore, Usage
from app.models import Domain, Mailbox, utcnow
from app.services import domains, mailboxes, removal, sending_admin
from app.services.sending import SendingLimits
from web.deps import SessionDep, StoreDep
from web.params import Id, SearchText
from web.portal.auth import AdminDep, AuthDep, FormDep
from web.portal.common import PAGE_SIZE, done_after_delete, redirect, split_page
from web.portal.forms import FormState, optional_size, saving, size_text
from web.portal.render import render

router = APIRouter()

CREATE_FIELDS = ("address", "password", "quota_bytes", "pop3_enabled")
SETTINGS_FIELDS = ("quota_bytes", "pop3_enabled")


def usage_of(store: MaildirStore, mailbox: Mailbox) -> Usage:
    return store.usage(MailboxRef.of(mailbox))


@router.get("/mailboxes")
def mailbox_list(
    request: Request,
    session: SessionDep,
    store: StoreDep,
    auth: AuthDep,
    q: SearchText = "",
    status: str = "",
    domain: Id | None = None,
    after: Id | None = None,
) -> HTMLResponse:
    scope: Domain | None = None
    if domain is not None:
        scope = domains.get_domain(session, domain_id=domain)
    rows = mailboxes.list_mailboxes(
        session,
        domain_id=domain,
        search=q.strip() or None,
        status=status or None,
        after_id=after,
        limit=PAGE_SIZE + 1,
    )
    page, next_after = split_page(rows)
    # One directory scan per row shown (50 at most): cheap, and always current.
    usage = {m.id: usage_of(store, m) for m in page}
    limited = sending_admin.limited_mailbox_ids(session, ids=[m.id for m in page], now=utcnow())
    return render(
        request,
        "mailboxes/list.html",
        {
            "mailboxes": page,
            "usage": usage,
            "sending_limited": limited,
            "scope": scope,
            "q": q,
            "status": status,
            "next_after": next_after,
        },
    )


@router.get("/mailboxes/new")
def mailbox_new(
    request: Request, session: SessionDep, auth: AdminDep, domain: Id | None = None
) -> HTMLResponse:
    values = {"pop3_enabled": "on"}
    scope = None
    if domain is not None:
        scope = domains.get_domain(session, domain_id=domain)
        values["address"] = f"@{scope.name}"
    form = FormState(values=values, fields=CREATE_FIELDS)
    return render(request, "mailboxes/new.html", {"form": form, "scope": scope})


@router.post("/mailboxes/new", response_model=None)
def mailbox_create(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep
) -> Response:
    form = FormState(values=data.values(), fields=CREATE_FIELDS)
    typed = data.get("password")
    password = typed or mailboxes.generate_password()
    with saving(session, form, default_field="address"):
        mailbox = mailboxes.create_mailbox(
            session,
            actor=auth.actor,
            address=data.text("address"),
            password=password,
            quota_bytes=optional_size(data.text("quota_bytes"), field_name="quota_bytes"),
            pop3_enabled=data.checked("pop3_enabled"),
        )
    if not form.ok:
        return render(request, "mailboxes/new.html", {"form": form, "scope": None}, status=422)
    if typed:
        return redirect(f"/mailboxes/{mailbox.id}?done=created")
    return _show_password(request, mailbox, password, created=True)


def _show_password(
    request: Request, mailbox: Mailbox, password: str, *, created: bool
) -> HTMLResponse:
    """The only time a generated password is ever shown: answered directly, never cached."""
    response = render(
        request,
        "mailboxes/password_shown.html",
        {"mailbox": mailbox, "password": password, "created": created},
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _detail(
    request: Request,
    session: SessionDep,
    store: MaildirStore,
    mailbox: Mailbox,
    *,
    status: int = 200,
    **forms: Any,
) -> HTMLResponse:
    settings_form = forms.pop("settings_form", None) or FormState(
        values={
            "quota_bytes": size_text(mailbox.quota_bytes),
            "pop3_enabled": "on" if mailbox.pop3_enabled else "",
        },
        fields=SETTINGS_FIELDS,
    )
    password_form = forms.pop("password_form", None) or FormState(fields=("password",))
    return render(
        request,
        "mailboxes/detail.html",
        {
            "mailbox": mailbox,
            "usage": usage_of(store, mailbox),
            "sending": sending_admin.mailbox_sending_status(
                session,
                mailbox_id=mailbox.id,
                now=utcnow(),
                limits=SendingLimits.from_settings(request.app.state.settings),
            ),
            "settings_form": settings_form,
            "password_form": password_form,
        },
        status=status,
    )


@router.get("/mailboxes/{mailbox_id}")
def mailbox_detail(
    request: Request, session: SessionDep, store: StoreDep, auth: AuthDep, mailbox_id: Id
) -> HTMLResponse:
    return _detail(request, session, store, mailboxes.get_mailbox(session, mailbox_id=mailbox_id))


@router.post("/mailboxes/{mailbox_id}/password", response_model=None)
def mailbox_password(
    request: Request,
    session: SessionDep,
    store: StoreDep,
    auth: AuthDep,
    data: FormDep,
    mailbox_id: Id,
) -> Response:
    """Admins and support may both reset a mailbox password (the most common support call)."""
    mailbox = mailboxes.get_mailbox(session, mailbox_id=mailbox_id)
    typed = data.get("password")
    generate = data.checked("generate") or not typed
    password = mailboxes.generate_password() if generate else typed
    form = FormState(fields=("password",))
    with saving(session, form, default_field="password"):
        if not generate and typed != data.get("password_confirm"):
            raise ValidationError("the two passwords differ", field="password")
        mailboxes.set_password(session, actor=auth.actor, mailbox_id=mailbox_id, password=password)
    if not form.ok:
        mailbox = mailboxes.get_mailbox(session, mailbox_id=mailbox_id)
        return _detail(request, session, store, mailbox, status=422, password_form=form)
    if generate:
        return _show_password(request, mailbox, password, created=False)
    return redirect(f"/mailboxes/{mailbox_id}?done=password")


@router.post("/mailboxes/{mailbox_id}/settings", response_model=None)
def mailbox_settings(
    request: Request,
    session: SessionDep,
    store: StoreDep,
    auth: AdminDep,
    data: FormDep,
    mailbox_id: Id,
) -> Response:
    mailboxes.get_mailbox(session, mailbox_id=mailbox_id)
    form = FormState(values=data.values(), fields=SETTINGS_FIELDS)
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
    if not form.ok:
        mailbox = mailboxes.get_mailbox(session, mailbox_id=mailbox_id)
        return _detail(request, session, store, mailbox, status=422, settings_form=form)
    return redirect(f"/mailboxes/{mailbox_id}?done=saved")


@router.post("/mailboxes/{mailbox_id}/status")
def mailbox_status(session: SessionDep, auth: AuthDep, data: FormDep, mailbox_id: Id) -> Response:
    status = data.text("status")
    mailboxes.set_mailbox_status(session, actor=auth.actor, mailbox_id=mailbox_id, status=status)
    session.commit()
    return redirect(f"/mailboxes/{mailbox_id}?done={status}")


@router.get("/mailboxes/{mailbox_id}/delete")
def mailbox_delete_form(
    request: Request, session: SessionDep, store: StoreDep, auth: AdminDep, mailbox_id: Id
) -> HTMLResponse:
    mailbox = mailboxes.get_mailbox(session, mailbox_id=mailbox_id)
    return render(
        request,
        "mailboxes/delete.html",
        {"mailbox": mailbox, "usage": usage_of(store, mailbox)},
    )


@router.post("/mailboxes/{mailbox_id}/delete")
def mailbox_delete(
    session: SessionDep, store: StoreDep, auth: AdminDep, data: FormDep, mailbox_id: Id
) -> Response:
    mailbox = mailboxes.get_mailbox(session, mailbox_id=mailbox_id)
    refs = removal.refs_of_mailbox(session, mailbox_id=mailbox_id)
    domain_id = mailbox.domain_id
    mailboxes.delete_mailbox(session, actor=auth.actor, mailbox_id=mailbox_id)
    session.commit()
    # Files only after the row is gone for good: a failed commit must not lose messages.
    leftovers = removal.remove_maildirs(store=store, refs=refs)
    return redirect(f"/mailboxes?domain={domain_id}&done={done_after_delete(leftovers)}")
