"""Customers, and the customer-scoped (tenant) views of their domains, mailboxes, aliases.

Thin router: see ``web.api.routes`` for the conventions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session

from app.db import transaction
from app.errors import NotFoundError
from app.models import STATUS_ACTIVE, STATUS_SUSPENDED, Domain, Mailbox
from app.services import customers, removal
from web.api.auth import CustomerReader, Provisioner, Reader
from web.api.common import (
    DEFAULT_LIMIT,
    Cursor,
    IdempotencyKey,
    Limit,
    Page,
    run_post,
)
from web.api.problems import ProblemRoute
from web.api.routes.aliases import alias_page
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
    ok,
    page_of,
    read_one,
)
from web.api.routes.domains import domain_page
from web.api.routes.mailboxes import mailbox_page
from web.api.schemas import (
    AliasPublic,
    CustomerCreate,
    CustomerPublic,
    CustomerUpdate,
    DomainPublic,
    MailboxPublic,
)
from web.deps import FactoryDep, StoreDep

router = APIRouter(prefix="/customers", tags=["customers"], route_class=ProblemRoute)


@router.get("", response_model=Page[CustomerPublic], responses=READ_ERRORS)
def list_customers(
    principal: Reader,
    factory: FactoryDep,
    status: StatusFilter = None,
    search: Search = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[CustomerPublic]:
    return page_of(
        factory,
        cursor,
        limit,
        lambda s, after, n: customers.list_customers(
            s, actor=principal.actor, search=search, status=status, after_id=after, limit=n
        ),
        CustomerPublic.of,
    )


@router.post(
    "",
    status_code=201,
    response_model=CustomerPublic,
    responses=WRITE_ERRORS,
)
def create_customer(
    body: CustomerCreate,
    request: Request,
    principal: Provisioner,
    factory: FactoryDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    def action(s: Session) -> tuple[int, BaseModel, dict[str, str]]:
        c = customers.create_customer(
            s,
            actor=principal.actor,
            name=body.name,
            price_per_mailbox=body.price_per_mailbox,
            currency=body.currency,
            price_per_relay_domain=body.price_per_relay_domain,
        )
        s.flush()
        return created(CustomerPublic.of(c), f"/api/v1/customers/{c.id}")

    return run_post(request, factory, principal, idempotency_key, body, action)


@router.get(
    "/{customer_id}",
    response_model=CustomerPublic,
    responses=READ_ERRORS,
)
def get_customer(customer_id: Id, principal: CustomerReader, factory: FactoryDep) -> BaseModel:
    return read_one(
        factory,
        lambda s: CustomerPublic.of(
            customers.get_customer(s, customer_id=customer_id, actor=principal.actor)
        ),
    )


@router.patch(
    "/{customer_id}",
    response_model=CustomerPublic,
    responses=WRITE_ERRORS,
)
def update_customer(
    customer_id: Id, body: CustomerUpdate, principal: Provisioner, factory: FactoryDep
) -> BaseModel:
    with transaction(factory) as s:
        c = customers.update_customer(
            s,
            actor=principal.actor,
            customer_id=customer_id,
            name=body.name,
            price_per_mailbox=body.price_per_mailbox,
            currency=body.currency,
            price_per_relay_domain=body.price_per_relay_domain,
        )
        return CustomerPublic.of(c)


def _customer_status_route(action_name: str, status: str) -> None:
    @router.post(
        f"/{{customer_id}}/{action_name}",
        response_model=CustomerPublic,
        responses=WRITE_ERRORS,
        name=f"{action_name}_customer",
        summary=f"{action_name.capitalize()} a customer",
    )
    def change(
        customer_id: Id,
        request: Request,
        principal: Provisioner,
        factory: FactoryDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        def run(s: Session) -> tuple[int, BaseModel, dict[str, str]]:
            c = customers.set_customer_status(
                s, actor=principal.actor, customer_id=customer_id, status=status
            )
            return ok(CustomerPublic.of(c))

        return run_post(request, factory, principal, idempotency_key, None, run)


_customer_status_route("suspend", STATUS_SUSPENDED)
_customer_status_route("resume", STATUS_ACTIVE)


@router.delete("/{customer_id}", status_code=204, responses=DELETE_RESPONSES)
def delete_customer(
    customer_id: Id,
    principal: Provisioner,
    factory: FactoryDep,
    store: StoreDep,
    cascade: Cascade = False,
) -> Response:
    with transaction(factory) as s:
        refs = removal.refs_of_customer(s, customer_id=customer_id)
        customers.delete_customer(
            s, actor=principal.actor, customer_id=customer_id, cascade=cascade
        )
    return deleted(removal.remove_maildirs(store=store, refs=refs))


# ---------------------------------------------------------------- customer-scoped (tenant) views
@router.get(
    "/{customer_id}/domains",
    response_model=Page[DomainPublic],
    responses=READ_ERRORS,
)
def list_customer_domains(
    customer_id: Id,
    principal: CustomerReader,
    factory: FactoryDep,
    status: StatusFilter = None,
    search: Search = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[DomainPublic]:
    return domain_page(
        factory, customer_id, status, search, cursor, limit, principal.actor, must_exist=True
    )


@router.get(
    "/{customer_id}/domains/{domain_id}",
    response_model=DomainPublic,
    responses=READ_ERRORS,
)
def get_customer_domain(
    customer_id: Id, domain_id: Id, principal: CustomerReader, factory: FactoryDep
) -> BaseModel:
    def build(s: Session) -> BaseModel:
        customers.get_customer(s, customer_id=customer_id, actor=principal.actor)
        d = s.get(Domain, domain_id)
        if d is None or d.customer_id != customer_id:
            raise NotFoundError(f"no domain with id {domain_id}", field="domain_id")
        return DomainPublic.of(d)

    return read_one(factory, build)


@router.get(
    "/{customer_id}/mailboxes",
    response_model=Page[MailboxPublic],
    responses=READ_ERRORS,
)
def list_customer_mailboxes(
    customer_id: Id,
    principal: CustomerReader,
    factory: FactoryDep,
    store: StoreDep,
    domain_id: IdFilter = None,
    status: StatusFilter = None,
    search: Search = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[MailboxPublic]:
    return mailbox_page(
        factory,
        store,
        customer_id,
        domain_id,
        status,
        search,
        cursor,
        limit,
        principal.actor,
        must_exist=True,
    )


@router.get(
    "/{customer_id}/mailboxes/{mailbox_id}",
    response_model=MailboxPublic,
    responses=READ_ERRORS,
)
def get_customer_mailbox(
    customer_id: Id, mailbox_id: Id, principal: CustomerReader, factory: FactoryDep, store: StoreDep
) -> BaseModel:
    def build(s: Session) -> BaseModel:
        customers.get_customer(s, customer_id=customer_id, actor=principal.actor)
        m = s.get(Mailbox, mailbox_id)
        if m is None or m.domain.customer_id != customer_id:
            raise NotFoundError(f"no mailbox with id {mailbox_id}", field="mailbox_id")
        return MailboxPublic.of(m, store)

    return read_one(factory, build)


@router.get(
    "/{customer_id}/aliases",
    response_model=Page[AliasPublic],
    responses=READ_ERRORS,
)
def list_customer_aliases(
    customer_id: Id,
    principal: CustomerReader,
    factory: FactoryDep,
    domain_id: IdFilter = None,
    search: Search = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[AliasPublic]:
    return alias_page(
        factory, customer_id, domain_id, search, cursor, limit, principal.actor, must_exist=True
    )
