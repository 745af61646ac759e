"""Relay domains (the "SMTP mail connection"): settings, listed recipients (also as CSV),
flush / hold / release and the queue summary, all through ``app.services.relay``.

Scopes: reading settings and recipients needs ``read``, changing them ``provisioning`` (as
for domains); the queue of a relay domain (summary, flush, hold, release) needs ``queue``, as
the outbound queue does. Thin router: see ``web.api.routes`` for the conventions.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.db import transaction
from app.errors import NotFoundError, ValidationError
from app.models import (
    RELAY_DEFAULT_CALLOUT_CACHE,
    RELAY_DEFAULT_MAX_AGE,
    Domain,
    RelayDomain,
    RelayRecipient,
    utcnow,
)
from app.services import relay, relay_recipients
from app.services.relay_hop import hop_checker
from app.services.relay_queue import RelayQueueSummary
from app.spool import SpoolStore
from web.api.auth import Provisioner, QueueOperator, Reader
from web.api.common import DEFAULT_LIMIT, Cursor, IdempotencyKey, Limit, Page, run_post
from web.api.problems import ProblemRoute
from web.api.routes.common import (
    READ_ERRORS,
    WRITE_ERRORS,
    Id,
    IdFilter,
    created,
    no_content,
    ok,
    page_of,
    read_one,
)
from web.deps import FactoryDep, SettingsDep
from web.params import SEARCH_MAX_LENGTH, StrictId

router = APIRouter(prefix="/relay-domains", tags=["relay domains"], route_class=ProblemRoute)

TlsPolicy = Literal["opportunistic", "required"]
RecipientMode = Literal["list", "verify", "any"]
CSV_MEDIA_TYPE = "text/csv"
Address = Annotated[
    str, Path(min_length=1, max_length=320, description="Local part or full address.")
]
# Strict numbers, as in every request schema (web/api/schemas.py): true or "1" is a 422.
Seconds = Annotated[StrictInt, Field(ge=1, le=relay.MAX_QUEUE_AGE)]
CacheSeconds = Annotated[StrictInt, Field(ge=0, le=relay.MAX_CALLOUT_CACHE)]
Networks = Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=50)]


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RelayDomainCreate(_Input):
    customer_id: StrictId
    name: str = Field(min_length=1, max_length=253)
    next_hop: str = Field(
        min_length=1,
        max_length=300,
        description="`host`, `host:port`, `[address]:port` or `mx:hostname` (the MX hosts "
        "of hostname). Refused when it resolves to Mailhost itself (a mail loop).",
    )
    tls_policy: TlsPolicy = "opportunistic"
    max_queue_age: Seconds = Field(
        default=RELAY_DEFAULT_MAX_AGE, description="Seconds; then a DSN to the sender."
    )
    recipient_mode: RecipientMode = Field(
        default="list",
        description="`list`: only listed recipients; `verify`: a callout to the next hop; "
        "`any`: everything (invites backscatter).",
    )
    callout_cache_seconds: CacheSeconds = RELAY_DEFAULT_CALLOUT_CACHE
    flush_networks: Networks = Field(
        default_factory=list, description="Client networks (CIDR) allowed to ETRN."
    )


class RelayDomainUpdate(_Input):
    next_hop: str | None = Field(default=None, min_length=1, max_length=300)
    tls_policy: TlsPolicy | None = None
    max_queue_age: Seconds | None = None
    recipient_mode: RecipientMode | None = None
    callout_cache_seconds: CacheSeconds | None = None
    flush_networks: Networks | None = None


class RelayDomainPublic(BaseModel):
    domain_id: int
    name: str
    customer_id: int
    status: str
    next_hop: str
    tls_policy: str
    max_queue_age: int
    recipient_mode: str
    callout_cache_seconds: int
    flush_networks: list[str]
    held: bool
    hold_reason: str | None
    created_at: dt.datetime

    @classmethod
    def of(cls, r: RelayDomain) -> RelayDomainPublic:
        return cls(
            domain_id=r.domain_id,
            name=r.domain.name,
            customer_id=r.domain.customer_id,
            status=r.domain.status,
            next_hop=r.next_hop,
            tls_policy=r.tls_policy,
            max_queue_age=r.max_queue_age,
            recipient_mode=r.recipient_mode,
            callout_cache_seconds=r.callout_cache_seconds,
            flush_networks=r.flush_network_list,
            held=r.held,
            hold_reason=r.hold_reason,
            created_at=r.created_at,
        )


class RelayRecipientCreate(_Input):
    address: str = Field(min_length=1, max_length=320, description="Local part or address.")


class RelayRecipientPublic(BaseModel):
    id: int
    address: str


class ImportResult(BaseModel):
    added: int
    already_listed: int
    removed: int


class RelayQueuePublic(BaseModel):
    domain_id: int
    count: int = Field(description="Recipients still to deliver (queued, deferred or held).")
    held: int
    oldest: dt.datetime | None = Field(description="When the oldest of them was queued.")
    last_error: str | None = Field(description="The last error a delivery attempt got.")
    last_error_at: dt.datetime | None

    @classmethod
    def of(cls, domain_id: int, q: RelayQueueSummary) -> RelayQueuePublic:
        return cls(
            domain_id=domain_id,
            count=q.count,
            held=q.held,
            oldest=q.oldest,
            last_error=q.last_error,
            last_error_at=q.last_error_at,
        )


class HoldRequest(_Input):
    reason: str | None = Field(default=None, max_length=500)


class QueueActionResult(BaseModel):
    domain_id: int
    recipients: int = Field(description="How many queued recipients the action changed.")
    held: bool


def _recipient_public(domain: str) -> Callable[[RelayRecipient], RelayRecipientPublic]:
    def public(r: RelayRecipient) -> RelayRecipientPublic:
        return RelayRecipientPublic(id=r.id, address=f"{r.local_part}@{domain}")

    return public


def _domain_public(d: Domain) -> RelayDomainPublic:
    if d.relay is None:  # list_relay_domains returns relay domains only
        raise NotFoundError(f"{d.name} is not a relay domain", field="domain_id")
    return RelayDomainPublic.of(d.relay)


# ---------------------------------------------------------------------------- the domains
@router.get("", response_model=Page[RelayDomainPublic], responses=READ_ERRORS)
def list_relay_domains(
    _: Reader,
    factory: FactoryDep,
    customer_id: IdFilter = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[RelayDomainPublic]:
    return page_of(
        factory,
        cursor,
        limit,
        lambda s, after, n: relay.list_relay_domains(
            s, customer_id=customer_id, after_id=after, limit=n
        ),
        _domain_public,
    )


@router.post("", status_code=201, response_model=RelayDomainPublic, responses=WRITE_ERRORS)
def create_relay_domain(
    body: RelayDomainCreate,
    request: Request,
    principal: Provisioner,
    factory: FactoryDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    def action(s: Session) -> tuple[int, BaseModel, dict[str, str]]:
        domain = relay.create_relay_domain(
            s,
            actor=principal.actor,
            customer_id=body.customer_id,
            name=body.name,
            next_hop=body.next_hop,
            tls_policy=body.tls_policy,
            max_queue_age=body.max_queue_age,
            recipient_mode=body.recipient_mode,
            callout_cache_seconds=body.callout_cache_seconds,
            flush_networks=body.flush_networks,
            hop_check=hop_checker(settings),
        )
        s.flush()
        r = relay.get_relay(s, domain_id=domain.id)
        return created(RelayDomainPublic.of(r), f"/api/v1/relay-domains/{domain.id}")

    return run_post(request, factory, principal, idempotency_key, body, action)


@router.get("/{domain_id}", response_model=RelayDomainPublic, responses=READ_ERRORS)
def get_relay_domain(domain_id: Id, _: Reader, factory: FactoryDep) -> BaseModel:
    return read_one(
        factory, lambda s: RelayDomainPublic.of(relay.get_relay(s, domain_id=domain_id))
    )


@router.patch("/{domain_id}", response_model=RelayDomainPublic, responses=WRITE_ERRORS)
def update_relay_domain(
    domain_id: Id,
    body: RelayDomainUpdate,
    principal: Provisioner,
    factory: FactoryDep,
    settings: SettingsDep,
) -> BaseModel:
    with transaction(factory) as s:
        r = relay.update_relay(
            s,
            actor=principal.actor,
            domain_id=domain_id,
            next_hop=body.next_hop,
            tls_policy=body.tls_policy,
            max_queue_age=body.max_queue_age,
            recipient_mode=body.recipient_mode,
            callout_cache_seconds=body.callout_cache_seconds,
            flush_networks=body.flush_networks,
            hop_check=hop_checker(settings),
        )
        return RelayDomainPublic.of(r)


@router.delete(
    "/{domain_id}",
    status_code=204,
    responses=WRITE_ERRORS,
    summary="Delete a relay domain (409 while mail for it is queued, unless discard=true)",
)
def delete_relay_domain(
    domain_id: Id,
    principal: Provisioner,
    factory: FactoryDep,
    settings: SettingsDep,
    discard: Annotated[
        bool, Query(description="Also delete its queued mail, without a bounce (audited).")
    ] = False,
) -> Response:
    with transaction(factory) as s:
        spool_ids = relay.delete_relay_domain(
            s, actor=principal.actor, domain_id=domain_id, discard=discard
        )
    spool = SpoolStore(settings.spool_root)
    for spool_id in spool_ids:  # after the commit; an orphan left is cleaned up by the agent
        spool.remove(spool_id)
    return no_content()


# ---------------------------------------------------------------------------- recipients
@router.get(
    "/{domain_id}/recipients", response_model=Page[RelayRecipientPublic], responses=READ_ERRORS
)
def list_recipients(
    domain_id: Id,
    _: Reader,
    factory: FactoryDep,
    search: Annotated[str | None, Query(max_length=SEARCH_MAX_LENGTH)] = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[RelayRecipientPublic]:
    with transaction(factory) as s:
        name = relay.get_relay(s, domain_id=domain_id).domain.name
    public = _recipient_public(name)
    return page_of(
        factory,
        cursor,
        limit,
        lambda s, after, n: relay_recipients.list_recipients(
            s, domain_id=domain_id, search=search, after_id=after, limit=n
        ),
        public,
    )


@router.post(
    "/{domain_id}/recipients",
    status_code=201,
    response_model=RelayRecipientPublic,
    responses=WRITE_ERRORS,
)
def add_recipient(
    domain_id: Id,
    body: RelayRecipientCreate,
    request: Request,
    principal: Provisioner,
    factory: FactoryDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    def action(s: Session) -> tuple[int, BaseModel, dict[str, str]]:
        row = relay_recipients.add_recipient(
            s, actor=principal.actor, domain_id=domain_id, address=body.address
        )
        name = relay.get_relay(s, domain_id=domain_id).domain.name
        item = RelayRecipientPublic(id=row.id, address=f"{row.local_part}@{name}")
        return created(item, f"/api/v1/relay-domains/{domain_id}/recipients/{item.address}")

    return run_post(request, factory, principal, idempotency_key, body, action)


@router.delete("/{domain_id}/recipients/{address}", status_code=204, responses=WRITE_ERRORS)
def remove_recipient(
    domain_id: Id, address: Address, principal: Provisioner, factory: FactoryDep
) -> Response:
    with transaction(factory) as s:
        relay_recipients.remove_recipient(
            s, actor=principal.actor, domain_id=domain_id, address=address
        )
    return no_content()


@router.get(
    "/{domain_id}/recipients.csv",
    responses={200: {"content": {CSV_MEDIA_TYPE: {"schema": {"type": "string"}}}}, **READ_ERRORS},
    summary="Export the listed recipients as CSV (a header `address`, one address a row)",
)
def export_recipients(domain_id: Id, _: Reader, factory: FactoryDep) -> Response:
    with transaction(factory) as s:
        name = relay.get_relay(s, domain_id=domain_id).domain.name
        text = relay_recipients.export_recipients_csv(s, domain_id=domain_id)
    return Response(
        text,
        media_type=f"{CSV_MEDIA_TYPE}; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="recipients-{name}.csv"'},
    )


@router.post(
    "/{domain_id}/recipients/import",
    response_model=ImportResult,
    responses=WRITE_ERRORS,
    summary="Import recipients from CSV (the body, text/csv): all or nothing",
    openapi_extra={"requestBody": {"content": {CSV_MEDIA_TYPE: {"schema": {"type": "string"}}}}},
)
async def import_recipients(
    domain_id: Id,
    request: Request,
    principal: Provisioner,
    factory: FactoryDep,
    replace: Annotated[
        bool, Query(description="Also remove the listed recipients the file does not name.")
    ] = False,
) -> BaseModel:
    raw = await request.body()
    text = _csv_text(raw)
    return await _run_import(factory, principal, domain_id, text, replace)


def _csv_text(raw: bytes) -> str:
    # Its size is limited before it is read (web/limits.py: MAILHOST_WEB_MAX_UPLOAD_BYTES).
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValidationError("the CSV is not UTF-8 text", field="body") from exc


async def _run_import(
    factory: FactoryDep, principal: Provisioner, domain_id: int, text: str, replace: bool
) -> BaseModel:
    def work() -> ImportResult:
        with transaction(factory) as s:
            summary = relay_recipients.import_recipients(
                s, actor=principal.actor, domain_id=domain_id, text=text, replace=replace
            )
            return ImportResult(
                added=summary.added,
                already_listed=summary.already_listed,
                removed=summary.removed,
            )

    return await run_in_threadpool(work)


# ---------------------------------------------------------------------------- its queue
@router.get("/{domain_id}/queue", response_model=RelayQueuePublic, responses=READ_ERRORS)
def relay_queue(domain_id: Id, _: QueueOperator, factory: FactoryDep) -> BaseModel:
    return read_one(
        factory,
        lambda s: RelayQueuePublic.of(domain_id, relay.queue_summary(s, domain_id=domain_id)),
    )


def _queue_action_route(name: str, summary: str) -> None:
    @router.post(
        f"/{{domain_id}}/{name}",
        response_model=QueueActionResult,
        responses=WRITE_ERRORS,
        name=f"{name}_relay_domain",
        summary=summary,
    )
    def change(
        domain_id: Id,
        request: Request,
        principal: QueueOperator,
        factory: FactoryDep,
        body: Annotated[HoldRequest | None, Body()] = None,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        def run(s: Session) -> tuple[int, BaseModel, dict[str, str]]:
            if name == "flush":
                count = relay.flush(s, actor=principal.actor, domain_id=domain_id, now=utcnow())
            elif name == "hold":
                reason = body.reason if body is not None else None
                count = relay.hold(s, actor=principal.actor, domain_id=domain_id, reason=reason)
            else:
                count = relay.release(s, actor=principal.actor, domain_id=domain_id, now=utcnow())
            held = relay.get_relay(s, domain_id=domain_id).held
            return ok(QueueActionResult(domain_id=domain_id, recipients=count, held=held))

        return run_post(request, factory, principal, idempotency_key, body, run)


_queue_action_route("flush", "Deliver the domain's queued and deferred mail now (ETRN)")
_queue_action_route("hold", "Hold the domain's mail (new mail is queued held too)")
_queue_action_route("release", "Release a held domain: its mail is due at once")
