"""Aliases: one address to one or more target addresses.

Thin router: see ``web.api.routes`` for the conventions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.services import aliases, domains
from app.services.audit import Actor
from app.services.tenancy import customer_scope
from web.api.auth import CustomerProvisioner, CustomerReader
from web.api.common import (
    DEFAULT_LIMIT,
    Cursor,
    IdempotencyKey,
    Limit,
    Page,
    run_post,
)
from web.api.problems import ProblemRoute
from web.api.routes.common import (
    READ_ERRORS,
    WRITE_ERRORS,
    Id,
    IdFilter,
    Search,
    created,
    no_content,
    page_of,
    read_one,
)
from web.api.schemas import (
    AliasCreate,
    AliasPublic,
    AliasUpdate,
)
from web.deps import FactoryDep

router = APIRouter(prefix="/aliases", tags=["aliases"], route_class=ProblemRoute)


@router.get("", response_model=Page[AliasPublic], responses=READ_ERRORS)
def list_aliases(
    principal: CustomerReader,
    factory: FactoryDep,
    customer_id: IdFilter = None,
    domain_id: IdFilter = None,
    search: Search = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[AliasPublic]:
    return alias_page(factory, customer_id, domain_id, search, cursor, limit, principal.actor)


def alias_page(
    factory: sessionmaker[Session],
    customer_id: int | None,
    domain_id: int | None,
    search: str | None,
    cursor: str | None,
    limit: int,
    actor: Actor,
    *,
    must_exist: bool = False,
) -> Page[AliasPublic]:
    """A customer's token sees its own customer only (another customer or domain: 404)."""
    if domain_id is not None and actor.customer_id is not None:
        with transaction(factory) as s:
            domains.get_domain(s, domain_id=domain_id, actor=actor)
    customer_id = customer_scope(actor, customer_id)
    return page_of(
        factory,
        cursor,
        limit,
        lambda s, after, n: aliases.list_aliases(
            s, domain_id=domain_id, customer_id=customer_id, search=search, after_id=after, limit=n
        ),
        AliasPublic.of,
        customer_must_exist=customer_id if must_exist else None,
        actor=actor,
    )


@router.post(
    "",
    status_code=201,
    response_model=AliasPublic,
    responses=WRITE_ERRORS,
)
def create_alias(
    body: AliasCreate,
    request: Request,
    principal: CustomerProvisioner,
    factory: FactoryDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    def action(s: Session) -> tuple[int, BaseModel, dict[str, str]]:
        a = aliases.create_alias(
            s, actor=principal.actor, address=body.address, targets=body.targets
        )
        s.flush()
        return created(AliasPublic.of(a), f"/api/v1/aliases/{a.id}")

    return run_post(request, factory, principal, idempotency_key, body, action)


@router.get("/{alias_id}", response_model=AliasPublic, responses=READ_ERRORS)
def get_alias(alias_id: Id, principal: CustomerReader, factory: FactoryDep) -> BaseModel:
    return read_one(
        factory,
        lambda s: AliasPublic.of(aliases.get_alias(s, alias_id=alias_id, actor=principal.actor)),
    )


@router.patch("/{alias_id}", response_model=AliasPublic, responses=WRITE_ERRORS)
def update_alias(
    alias_id: Id, body: AliasUpdate, principal: CustomerProvisioner, factory: FactoryDep
) -> BaseModel:
    with transaction(factory) as s:
        a = aliases.set_alias_targets(
            s, actor=principal.actor, alias_id=alias_id, targets=body.targets
        )
        return AliasPublic.of(a)


@router.delete("/{alias_id}", status_code=204, responses=WRITE_ERRORS)
def delete_alias(alias_id: Id, principal: CustomerProvisioner, factory: FactoryDep) -> Response:
    with transaction(factory) as s:
        aliases.delete_alias(s, actor=principal.actor, alias_id=alias_id)
    return no_content()
