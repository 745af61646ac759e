"""Relay domain pages (the "SMTP mail connection"): the list with each queue, create, the
domain's page (settings, listed recipients with CSV import and export, its queue with flush /
hold / release, the DNS records to publish) and delete; the dashboard's relay queues.

Everything goes through ``app.services.relay``. Reading needs a login (support operators see
the pages), changing needs an admin, as elsewhere in the portal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from app.errors import ConflictError
from app.models import RELAY_MODE_ANY, RELAY_MODES, RELAY_TLS_POLICIES, Domain, utcnow
from app.services import relay, relay_dns, relay_queue, relay_recipients
from app.services.addresses import domain_to_unicode
from app.services.dkim import DnsPolicy
from app.services.relay_hop import hop_checker
from app.services.relay_queue import RelayQueueSummary
from app.spool import SpoolStore
from web.deps import SessionDep
from web.params import Id
from web.portal.auth import AdminDep, AuthDep, FormDep
from web.portal.common import redirect
from web.portal.domains import _customer_from_text
from web.portal.errors import PortalError
from web.portal.forms import FormState, PostForm, optional_int, saving
from web.portal.render import render

router = APIRouter()

SETTING_FIELDS = (
    "next_hop",
    "tls_policy",
    "max_queue_days",
    "recipient_mode",
    "callout_cache_seconds",
    "flush_networks",
)
CREATE_FIELDS = ("name", "customer", *SETTING_FIELDS)
MAX_UPLOAD = 5 * 1024 * 1024  # a recipient CSV larger than this is refused before parsing
RECIPIENTS_SHOWN = 500
DAY = 86400
# The dashboard lists this many relay domains, those with the most mail waiting first.
DASHBOARD_ROWS = 10


@dataclass(frozen=True, slots=True)
class RelayRow:
    domain: Domain
    queue: RelayQueueSummary


def _rows(session: Session, domains: list[Domain]) -> list[RelayRow]:
    return [
        RelayRow(d, relay_queue.summary(session, domain_name=d.name))
        for d in domains
        if d.relay is not None
    ]


def dashboard_rows(session: Session) -> list[RelayRow]:
    """The relay domains with mail waiting, most first (for the dashboard)."""
    rows = _rows(session, relay.list_relay_domains(session, limit=1000))
    waiting = [r for r in rows if r.queue.count]
    waiting.sort(key=lambda r: (-r.queue.count, r.domain.name))
    return waiting[:DASHBOARD_ROWS]


def _policy(request: Request) -> DnsPolicy:
    return DnsPolicy.from_settings(request.app.state.settings)


def _setting_values(data: PostForm) -> dict[str, Any]:
    """The settings form as service arguments; errors land on the form's field names."""
    days = optional_int(data.text("max_queue_days"), field_name="max_queue_days")
    cache = optional_int(data.text("callout_cache_seconds"), field_name="callout_cache_seconds")
    return {
        "next_hop": data.text("next_hop"),
        "tls_policy": data.text("tls_policy") or None,
        "max_queue_age": None if days is None else days * DAY,
        "recipient_mode": data.text("recipient_mode") or None,
        "callout_cache_seconds": cache,
        "flush_networks": data.text("flush_networks").replace(",", " ").split(),
    }


def _settings_form(domain: Domain) -> FormState:
    r = domain.relay
    assert r is not None
    return FormState(
        values={
            "next_hop": r.next_hop,
            "tls_policy": r.tls_policy,
            "max_queue_days": str(r.max_queue_age // DAY)
            if r.max_queue_age % DAY == 0
            else f"{r.max_queue_age / DAY:.2f}",
            "recipient_mode": r.recipient_mode,
            "callout_cache_seconds": str(r.callout_cache_seconds),
            "flush_networks": " ".join(r.flush_network_list),
        },
        fields=SETTING_FIELDS,
    )


# ---------------------------------------------------------------------------- list, create
@router.get("/relay")
def relay_list(request: Request, session: SessionDep, auth: AuthDep) -> HTMLResponse:
    rows = _rows(session, relay.list_relay_domains(session, limit=1000))
    return render(request, "relay/list.html", {"rows": rows})


@router.get("/relay/new")
def relay_new(request: Request, auth: AdminDep) -> HTMLResponse:
    form = FormState(
        values={
            "tls_policy": "opportunistic",
            "max_queue_days": "10",
            "recipient_mode": "list",
            "callout_cache_seconds": "3600",
        },
        fields=CREATE_FIELDS,
    )
    return render(request, "relay/new.html", _choices({"form": form}))


def _choices(ctx: dict[str, Any]) -> dict[str, Any]:
    return {**ctx, "modes": RELAY_MODES, "tls_policies": RELAY_TLS_POLICIES}


@router.post("/relay/new", response_model=None)
def relay_create(request: Request, session: SessionDep, auth: AdminDep, data: FormDep) -> Response:
    form = FormState(values=data.values(), fields=(*CREATE_FIELDS, "max_queue_age"))
    settings = request.app.state.settings
    with saving(session, form, default_field="name"):
        customer_id = _customer_from_text(session, data.text("customer"))
        values = {k: v for k, v in _setting_values(data).items() if v is not None}
        domain = relay.create_relay_domain(
            session,
            actor=auth.actor,
            customer_id=customer_id,
            name=data.text("name"),
            hop_check=hop_checker(settings),
            **values,
        )
        domain_id = domain.id
    if not form.ok:
        _days_field(form)
        return render(request, "relay/new.html", _choices({"form": form}), status=422)
    return redirect(f"/relay/{domain_id}?done=created")


def _days_field(form: FormState) -> None:
    """The service names max_queue_age (seconds); the form asks for days."""
    if "max_queue_age" in form.errors:
        form.errors["max_queue_days"] = form.errors.pop("max_queue_age")


# ---------------------------------------------------------------------------- the page
def _detail(
    request: Request, session: Session, domain_id: int, *, status: int = 200, **forms: Any
) -> HTMLResponse:
    r = relay.get_relay(session, domain_id=domain_id)
    domain = r.domain
    recipients = relay_recipients.list_recipients(
        session, domain_id=domain_id, limit=RECIPIENTS_SHOWN
    )
    return render(
        request,
        "relay/detail.html",
        _choices(
            {
                "domain": domain,
                "relay": r,
                "unicode_name": domain_to_unicode(domain.name),
                "customer": domain.customer,
                "queue": relay.queue_summary(session, domain_id=domain_id),
                "recipients": recipients,
                "recipient_count": relay_recipients.count_recipients(session, domain_id=domain_id),
                "recipients_shown": RECIPIENTS_SHOWN,
                "mode_any": r.recipient_mode == RELAY_MODE_ANY,
                "dns": relay_dns.mx_options(
                    domain_name=domain.name, next_hop=r.next_hop, policy=_policy(request)
                ),
                "settings_form": forms.get("settings_form") or _settings_form(domain),
                "recipient_form": forms.get("recipient_form") or FormState(fields=("address",)),
                "import_form": forms.get("import_form") or FormState(fields=("file",)),
                "delete_form": forms.get("delete_form") or FormState(fields=("discard",)),
            }
        ),
        status=status,
    )


@router.get("/relay/{domain_id}")
def relay_detail(request: Request, session: SessionDep, auth: AuthDep, domain_id: Id) -> Response:
    return _detail(request, session, domain_id)


@router.post("/relay/{domain_id}/settings", response_model=None)
def relay_settings(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep, domain_id: Id
) -> Response:
    relay.get_relay(session, domain_id=domain_id)
    form = FormState(values=data.values(), fields=(*SETTING_FIELDS, "max_queue_age"))
    with saving(session, form, default_field="next_hop"):
        relay.update_relay(
            session,
            actor=auth.actor,
            domain_id=domain_id,
            hop_check=hop_checker(request.app.state.settings),
            **_setting_values(data),
        )
    if not form.ok:
        _days_field(form)
        return _detail(request, session, domain_id, status=422, settings_form=form)
    return redirect(f"/relay/{domain_id}?done=saved#settings")


# ---------------------------------------------------------------------------- recipients
@router.post("/relay/{domain_id}/recipients", response_model=None)
def relay_recipient_add(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep, domain_id: Id
) -> Response:
    relay.get_relay(session, domain_id=domain_id)
    form = FormState(values=data.values(), fields=("address",))
    with saving(session, form, default_field="address"):
        relay_recipients.add_recipient(
            session, actor=auth.actor, domain_id=domain_id, address=data.text("address")
        )
    if not form.ok:
        return _detail(request, session, domain_id, status=422, recipient_form=form)
    return redirect(f"/relay/{domain_id}?done=saved#recipients")


@router.post("/relay/{domain_id}/recipients/remove", response_model=None)
def relay_recipient_remove(
    session: SessionDep, auth: AdminDep, data: FormDep, domain_id: Id
) -> Response:
    relay_recipients.remove_recipient(
        session, actor=auth.actor, domain_id=domain_id, address=data.text("address")
    )
    session.commit()
    return redirect(f"/relay/{domain_id}?done=deleted#recipients")


@router.post("/relay/{domain_id}/recipients/import", response_model=None)
def relay_recipient_import(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep, domain_id: Id
) -> Response:
    relay.get_relay(session, domain_id=domain_id)
    form = FormState(values={}, fields=("file",))
    upload = data.file("file")
    raw = upload.file.read(MAX_UPLOAD + 1) if upload is not None else b""
    if not raw:
        form.error("file", "Choose a CSV file to upload.")
    elif len(raw) > MAX_UPLOAD:
        form.error("file", "The file is larger than 5 MiB.")
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            form.error("file", "The file is not UTF-8 text.")
        else:
            with saving(session, form, default_field="file"):
                relay_recipients.import_recipients(
                    session,
                    actor=auth.actor,
                    domain_id=domain_id,
                    text=text,
                    replace=data.checked("replace"),
                )
    if not form.ok:
        return _detail(request, session, domain_id, status=422, import_form=form)
    return redirect(f"/relay/{domain_id}?done=imported#recipients")


@router.get("/relay/{domain_id}/recipients.csv")
def relay_recipient_export(session: SessionDep, auth: AuthDep, domain_id: Id) -> Response:
    name = relay.get_relay(session, domain_id=domain_id).domain.name
    text = relay_recipients.export_recipients_csv(session, domain_id=domain_id)
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="recipients-{name}.csv"'},
    )


# ---------------------------------------------------------------------------- the queue
@router.post("/relay/{domain_id}/flush", response_model=None)
def relay_flush(session: SessionDep, auth: AdminDep, data: FormDep, domain_id: Id) -> Response:
    try:
        relay.flush(session, actor=auth.actor, domain_id=domain_id, now=utcnow())
    except ConflictError as exc:  # held: a button that does not apply, as on the queue page
        session.rollback()
        raise PortalError(409, "Not flushed", exc.message) from exc
    session.commit()
    return redirect(f"/relay/{domain_id}?done=queue_retry#queue")


@router.post("/relay/{domain_id}/hold", response_model=None)
def relay_hold(session: SessionDep, auth: AdminDep, data: FormDep, domain_id: Id) -> Response:
    reason = data.text("reason")
    if len(reason) > 500:
        raise PortalError(422, "Reason too long", "The reason is at most 500 characters.")
    relay.hold(session, actor=auth.actor, domain_id=domain_id, reason=reason or None)
    session.commit()
    return redirect(f"/relay/{domain_id}?done=queue_hold#queue")


@router.post("/relay/{domain_id}/release", response_model=None)
def relay_release(session: SessionDep, auth: AdminDep, data: FormDep, domain_id: Id) -> Response:
    relay.release(session, actor=auth.actor, domain_id=domain_id, now=utcnow())
    session.commit()
    return redirect(f"/relay/{domain_id}?done=queue_release#queue")


@router.post("/relay/{domain_id}/delete", response_model=None)
def relay_delete(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep, domain_id: Id
) -> Response:
    relay.get_relay(session, domain_id=domain_id)
    form = FormState(values=data.values(), fields=("discard",))
    spool_ids: list[str] = []
    with saving(session, form, default_field="discard"):
        spool_ids = relay.delete_relay_domain(
            session, actor=auth.actor, domain_id=domain_id, discard=data.checked("discard")
        )
    if not form.ok:
        return _detail(request, session, domain_id, status=409, delete_form=form)
    spool = SpoolStore(request.app.state.settings.spool_root)
    for spool_id in spool_ids:  # after the commit; the delivery agent cleans orphans too
        spool.remove(spool_id)
    return redirect("/relay?done=deleted")
