"""Hosted domains and their alias domains.

Thin router: see ``web.api.routes`` for the conventions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.errors import NotFoundError
from app.models import STATUS_ACTIVE, STATUS_SUSPENDED, DomainAlias
from app.services import domains, removal
from app.services.audit import Actor
from app.services.tenancy import customer_scope
from web.api.auth import CustomerReader, Provisioner
from web.api.common import (
    DEFAULT_LIMIT,
    Cursor,
    IdempotencyKey,
    Limit,
    Page,
    api_fields,
    run_post,
)
from web.api.problems import ProblemRoute
from web.api.routes.common import (
    DELETE_RESPONSES,
    READ_ERRORS,
    WRITE_ERRORS,
    Cascade,
    Id,
    IdFilter,
    Search,
    StatusFilter,
    created,
    deleted,
    no_content,
    ok,
    page_of,
    read_one,
)
from web.api.schemas import (
    DomainAliasCreate,
    DomainAliasPublic,
    DomainCreate,
    DomainPublic,
    DomainUpdate,
)
from web.deps import FactoryDep, StoreDep

router = APIRouter(prefix="/domains", tags=["domains"], route_class=ProblemRoute)


@router.get("", response_model=Page[DomainPublic], responses=READ_ERRORS)
def list_domains(
    principal: CustomerReader,
    factory: FactoryDep,
    customer_id: IdFilter = None,
    status: StatusFilter = None,
    search: Search = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[DomainPublic]:
    return domain_page(factory, customer_id, status, search, cursor, limit, principal.actor)


def domain_page(
    factory: sessionmaker[Session],
    customer_id: int | None,
    status: str | None,
    search: str | None,
    cursor: str | None,
    limit: int,
    actor: Actor,
    *,
    must_exist: bool = False,
) -> Page[DomainPublic]:
    """A customer's token sees its own customer only (another customer: 404)."""
    customer_id = customer_scope(actor, customer_id)
    return page_of(
        factory,
        cursor,
        limit,
        lambda s, after, n: domains.list_domains(
            s, customer_id=customer_id, search=search, status=status, after_id=after, limit=n
        ),
        DomainPublic.of,
        customer_must_exist=customer_id if must_exist else None,
        actor=actor,
    )


@router.post(
    "",
    status_code=201,
    response_model=DomainPublic,
    responses=WRITE_ERRORS,
)
def create_domain(
    body: DomainCreate,
    request: Request,
    principal: Provisioner,
    factory: FactoryDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    def action(s: Session) -> tuple[int, BaseModel, dict[str, str]]:
        d = domains.create_domain(
            s,
            actor=principal.actor,
            customer_id=body.customer_id,
            name=body.name,
            max_mailboxes=body.max_mailboxes,
            default_quota_bytes=body.default_quota_bytes,
            total_quota_bytes=body.total_quota_bytes,
        )
        s.flush()
        s.refresh(d)
        return created(DomainPublic.of(d), f"/api/v1/domains/{d.id}")

    return run_post(request, factory, principal, idempotency_key, body, action)


@router.get("/{domain_id}", response_model=DomainPublic, responses=READ_ERRORS)
def get_domain(domain_id: Id, principal: CustomerReader, factory: FactoryDep) -> BaseModel:
    return read_one(
        factory,
        lambda s: DomainPublic.of(
            domains.get_domain(s, domain_id=domain_id, actor=principal.actor)
        ),
    )


@router.patch("/{domain_id}", response_model=DomainPublic, responses=WRITE_ERRORS)
def update_domain(
    domain_id: Id, body: DomainUpdate, principal: Provisioner, factory: FactoryDep
) -> BaseModel:
    given = body.model_fields_set
    with transaction(factory) as s:
        d = domains.update_domain(
            s,
            actor=principal.actor,
            domain_id=domain_id,
            max_mailboxes=body.max_mailboxes,
            default_quota_bytes=body.default_quota_bytes,
            total_quota_bytes=body.total_quota_bytes,
            clear_max_mailboxes="max_mailboxes" in given and body.max_mailboxes is None,
            clear_total_quota="total_quota_bytes" in given and body.total_quota_bytes is None,
        )
        if "catchall_target" in given:
            with api_fields(target="catchall_target"):
                d = domains.set_catchall(
                    s, actor=principal.actor, domain_id=domain_id, target=body.catchall_target
                )
        return DomainPublic.of(d)


def _domain_status_route(action_name: str, status: str) -> None:
    @router.post(
        f"/{{domain_id}}/{action_name}",
        response_model=DomainPublic,
        responses=WRITE_ERRORS,
        name=f"{action_name}_domain",
        summary=f"{action_name.capitalize()} a domain (recorded as a lifecycle event)",
    )
    def change(
        domain_id: Id,
        request: Request,
        principal: Provisioner,
        factory: FactoryDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        def run(s: Session) -> tuple[int, BaseModel, dict[str, str]]:
            d = domains.set_domain_status(
                s, actor=principal.actor, domain_id=domain_id, status=status
            )
            return ok(DomainPublic.of(d))

        return run_post(request, factory, principal, idempotency_key, None, run)


_domain_status_route("suspend", STATUS_SUSPENDED)
_domain_status_route("resume", STATUS_ACTIVE)


@router.delete("/{domain_id}", status_code=204, responses=DELETE_RESPONSES)
def delete_domain(
    domain_id: Id,
    principal: Provisioner,
    factory: FactoryDep,
    store: StoreDep,
    cascade: Cascade = False,
) -> Response:
    with transaction(factory) as s:
        refs = removal.refs_of_domain(s, domain_id=domain_id)
        domains.delete_domain(s, actor=principal.actor, domain_id=domain_id, cascade=cascade)
    return deleted(removal.remove_maildirs(store=store, refs=refs))


# ---------------------------------------------------------------------------- alias domains
@router.get(
    "/{domain_id}/aliases",
    response_model=list[DomainAliasPublic],
    responses=READ_ERRORS,
    summary="List the alias domains of a domain",
)
def list_domain_aliases(
    domain_id: Id, principal: CustomerReader, factory: FactoryDep
) -> list[DomainAliasPublic]:
    with transaction(factory) as s:
        d = domains.get_domain(s, domain_id=domain_id, actor=principal.actor)
        return [DomainAliasPublic.of(a) for a in sorted(d.domain_aliases, key=lambda a: a.id)]


@router.post(
    "/{domain_id}/aliases",
    status_code=201,
    response_model=DomainAliasPublic,
    responses=WRITE_ERRORS,
    summary="Add an alias domain (mail to user@alias goes to user@domain)",
)
def add_domain_alias(
    domain_id: Id,
    body: DomainAliasCreate,
    request: Request,
    principal: Provisioner,
    factory: FactoryDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    def action(s: Session) -> tuple[int, BaseModel, dict[str, str]]:
        with api_fields(alias_name="name"):
            a = domains.add_domain_alias(
                s, actor=principal.actor, domain_id=domain_id, alias_name=body.name
            )
        s.flush()
        return created(DomainAliasPublic.of(a), f"/api/v1/domains/{domain_id}/aliases/{a.id}")

    return run_post(request, factory, principal, idempotency_key, body, action)


@router.delete(
    "/{domain_id}/aliases/{alias_id}",
    status_code=204,
    responses=WRITE_ERRORS,
    summary="Remove an alias domain",
)
def remove_domain_alias(
    domain_id: Id, alias_id: Id, principal: Provisioner, factory: FactoryDep
) -> Response:
    with transaction(factory) as s:
        a = s.get(DomainAlias, alias_id)
        if a is None or a.target_domain_id != domain_id:
            raise NotFoundError(f"no alias domain with id {alias_id}", field="alias_id")
        domains.remove_domain_alias(s, actor=principal.actor, alias_name=a.name)
    return no_content()
