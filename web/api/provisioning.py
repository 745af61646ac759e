"""Provisioning endpoints: customers, domains, alias domains, mailboxes and aliases.

Thin routers: validate with the schemas, call the services inside one transaction (the edge
owns it), answer the Public schema. Every change is audited by the service with the token as
actor. Scopes: ``read`` for GET, ``provisioning`` for everything that changes state.

Tenant isolation: the ``/customers/{customer_id}/...`` paths and the ``customer_id`` filters
are applied in the query itself; an object of another customer asked for under a customer's
path is "not found" (404, the same answer as for an id that does not exist).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Protocol, TypeVar

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.errors import NotFoundError
from app.maildir import MaildirStore
from app.models import STATUS_ACTIVE, STATUS_SUSPENDED, Domain, DomainAlias, Mailbox
from app.services import aliases, customers, domains, mailboxes, removal
from web.api.auth import Provisioner, Reader
from web.api.common import (
    DEFAULT_LIMIT,
    Cursor,
    FactoryDep,
    IdempotencyKey,
    Limit,
    Page,
    api_fields,
    decode_cursor,
    make_page,
    run_post,
)
from web.api.problems import ProblemRoute, problem_responses
from web.api.schemas import (
    AliasCreate,
    AliasPublic,
    AliasUpdate,
    CustomerCreate,
    CustomerPublic,
    CustomerUpdate,
    DomainAliasCreate,
    DomainAliasPublic,
    DomainCreate,
    DomainPublic,
    DomainUpdate,
    MailboxCreate,
    MailboxPublic,
    MailboxUpdate,
    Status,
)
from web.deps import StoreDep

MAX_ID = 2**31 - 1  # ids are 32-bit integers in the database
Id = Annotated[int, Path(ge=1, le=MAX_ID)]
IdFilter = Annotated[int | None, Query(ge=1, le=MAX_ID)]
StatusFilter = Annotated[Status | None, Query()]
Search = Annotated[str | None, Query(max_length=200, description="Substring of the name.")]
Cascade = Annotated[
    bool, Query(description="Also delete everything below (domains, mailboxes, aliases).")
]

READ_ERRORS = problem_responses(401, 403, 404, 422, 503)
WRITE_ERRORS = problem_responses(400, 401, 403, 404, 409, 422, 503)


class DeletionWarnings(BaseModel):
    """The deletion is done (committed); something it should have cleaned up is left."""

    warnings: list[str]


DELETE_RESPONSES: dict[int | str, dict[str, object]] = {
    **WRITE_ERRORS,
    200: {
        "model": DeletionWarnings,
        "description": "Deleted, but message files of deleted mailboxes could not be removed "
        "from the server's disk (204 when everything went)",
    },
}

router = APIRouter(route_class=ProblemRoute)


class _HasId(Protocol):
    @property
    def id(self) -> int: ...


Row = TypeVar("Row", bound=_HasId)
Item = TypeVar("Item", bound=BaseModel)


def _no_content() -> Response:
    return Response(status_code=204)


def _deleted(leftovers: Sequence[removal.LeftoverMaildir]) -> Response:
    """204, or 200 with the warnings when files of the deleted mailboxes stayed on disk: the
    deletion happened either way, so it is never an error status."""
    if not leftovers:
        return _no_content()
    body = DeletionWarnings(warnings=[leftover.message for leftover in leftovers])
    return Response(body.model_dump_json(), status_code=200, media_type="application/json")


def _created(body: BaseModel, location: str) -> tuple[int, BaseModel, dict[str, str]]:
    return 201, body, {"Location": location}


def _ok(body: BaseModel) -> tuple[int, BaseModel, dict[str, str]]:
    return 200, body, {}


def _read(factory: sessionmaker[Session], build: Callable[[Session], BaseModel]) -> BaseModel:
    with transaction(factory) as session:
        return build(session)


def _page(
    factory: sessionmaker[Session],
    cursor: str | None,
    limit: int,
    fetch: Callable[[Session, int | None, int], Sequence[Row]],
    public: Callable[[Row], Item],
    *,
    customer_must_exist: int | None = None,
) -> Page[Item]:
    """One page of a list: ``fetch(session, after_id, limit + 1)`` rows, shown as ``public``.

    ``customer_must_exist`` is for the ``/customers/{id}/...`` views: an unknown customer is a
    404 there, not an empty page.
    """
    after = decode_cursor(cursor)
    with transaction(factory) as s:
        if customer_must_exist is not None:
            customers.get_customer(s, customer_id=customer_must_exist)
        rows = fetch(s, after, limit + 1)
        kept, next_cursor = make_page(rows, limit, lambda row: row.id)
        return Page[Item](items=[public(row) for row in kept], next_cursor=next_cursor)


# ================================================================================= customers
@router.get(
    "/customers", response_model=Page[CustomerPublic], responses=READ_ERRORS, tags=["customers"]
)
def list_customers(
    _: Reader,
    factory: FactoryDep,
    status: StatusFilter = None,
    search: Search = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[CustomerPublic]:
    return _page(
        factory,
        cursor,
        limit,
        lambda s, after, n: customers.list_customers(
            s, search=search, status=status, after_id=after, limit=n
        ),
        CustomerPublic.of,
    )


@router.post(
    "/customers",
    status_code=201,
    response_model=CustomerPublic,
    responses=WRITE_ERRORS,
    tags=["customers"],
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
        )
        s.flush()
        return _created(CustomerPublic.of(c), f"/api/v1/customers/{c.id}")

    return run_post(request, factory, principal, idempotency_key, body, action)


@router.get(
    "/customers/{customer_id}",
    response_model=CustomerPublic,
    responses=READ_ERRORS,
    tags=["customers"],
)
def get_customer(customer_id: Id, _: Reader, factory: FactoryDep) -> BaseModel:
    return _read(
        factory, lambda s: CustomerPublic.of(customers.get_customer(s, customer_id=customer_id))
    )


@router.patch(
    "/customers/{customer_id}",
    response_model=CustomerPublic,
    responses=WRITE_ERRORS,
    tags=["customers"],
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
        )
        return CustomerPublic.of(c)


def _customer_status_route(action_name: str, status: str) -> None:
    @router.post(
        f"/customers/{{customer_id}}/{action_name}",
        response_model=CustomerPublic,
        responses=WRITE_ERRORS,
        tags=["customers"],
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
            return _ok(CustomerPublic.of(c))

        return run_post(request, factory, principal, idempotency_key, None, run)


_customer_status_route("suspend", STATUS_SUSPENDED)
_customer_status_route("resume", STATUS_ACTIVE)


@router.delete(
    "/customers/{customer_id}", status_code=204, responses=DELETE_RESPONSES, tags=["customers"]
)
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
    return _deleted(removal.remove_maildirs(store=store, refs=refs))


# ---------------------------------------------------------------- customer-scoped (tenant) views
@router.get(
    "/customers/{customer_id}/domains",
    response_model=Page[DomainPublic],
    responses=READ_ERRORS,
    tags=["customers"],
)
def list_customer_domains(
    customer_id: Id,
    _: Reader,
    factory: FactoryDep,
    status: StatusFilter = None,
    search: Search = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[DomainPublic]:
    return _domain_page(factory, customer_id, status, search, cursor, limit, must_exist=True)


@router.get(
    "/customers/{customer_id}/domains/{domain_id}",
    response_model=DomainPublic,
    responses=READ_ERRORS,
    tags=["customers"],
)
def get_customer_domain(
    customer_id: Id, domain_id: Id, _: Reader, factory: FactoryDep
) -> BaseModel:
    def build(s: Session) -> BaseModel:
        d = s.get(Domain, domain_id)
        if d is None or d.customer_id != customer_id:
            raise NotFoundError(f"no domain with id {domain_id}", field="domain_id")
        return DomainPublic.of(d)

    return _read(factory, build)


@router.get(
    "/customers/{customer_id}/mailboxes",
    response_model=Page[MailboxPublic],
    responses=READ_ERRORS,
    tags=["customers"],
)
def list_customer_mailboxes(
    customer_id: Id,
    _: Reader,
    factory: FactoryDep,
    store: StoreDep,
    domain_id: IdFilter = None,
    status: StatusFilter = None,
    search: Search = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[MailboxPublic]:
    return _mailbox_page(
        factory, store, customer_id, domain_id, status, search, cursor, limit, must_exist=True
    )


@router.get(
    "/customers/{customer_id}/mailboxes/{mailbox_id}",
    response_model=MailboxPublic,
    responses=READ_ERRORS,
    tags=["customers"],
)
def get_customer_mailbox(
    customer_id: Id, mailbox_id: Id, _: Reader, factory: FactoryDep, store: StoreDep
) -> BaseModel:
    def build(s: Session) -> BaseModel:
        m = s.get(Mailbox, mailbox_id)
        if m is None or m.domain.customer_id != customer_id:
            raise NotFoundError(f"no mailbox with id {mailbox_id}", field="mailbox_id")
        return MailboxPublic.of(m, store)

    return _read(factory, build)


@router.get(
    "/customers/{customer_id}/aliases",
    response_model=Page[AliasPublic],
    responses=READ_ERRORS,
    tags=["customers"],
)
def list_customer_aliases(
    customer_id: Id,
    _: Reader,
    factory: FactoryDep,
    domain_id: IdFilter = None,
    search: Search = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[AliasPublic]:
    return _alias_page(factory, customer_id, domain_id, search, cursor, limit, must_exist=True)


# ================================================================================= domains
@router.get("/domains", response_model=Page[DomainPublic], responses=READ_ERRORS, tags=["domains"])
def list_domains(
    _: Reader,
    factory: FactoryDep,
    customer_id: IdFilter = None,
    status: StatusFilter = None,
    search: Search = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[DomainPublic]:
    return _domain_page(factory, customer_id, status, search, cursor, limit)


def _domain_page(
    factory: sessionmaker[Session],
    customer_id: int | None,
    status: str | None,
    search: str | None,
    cursor: str | None,
    limit: int,
    *,
    must_exist: bool = False,
) -> Page[DomainPublic]:
    return _page(
        factory,
        cursor,
        limit,
        lambda s, after, n: domains.list_domains(
            s, customer_id=customer_id, search=search, status=status, after_id=after, limit=n
        ),
        DomainPublic.of,
        customer_must_exist=customer_id if must_exist else None,
    )


@router.post(
    "/domains",
    status_code=201,
    response_model=DomainPublic,
    responses=WRITE_ERRORS,
    tags=["domains"],
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
        return _created(DomainPublic.of(d), f"/api/v1/domains/{d.id}")

    return run_post(request, factory, principal, idempotency_key, body, action)


@router.get(
    "/domains/{domain_id}", response_model=DomainPublic, responses=READ_ERRORS, tags=["domains"]
)
def get_domain(domain_id: Id, _: Reader, factory: FactoryDep) -> BaseModel:
    return _read(factory, lambda s: DomainPublic.of(domains.get_domain(s, domain_id=domain_id)))


@router.patch(
    "/domains/{domain_id}", response_model=DomainPublic, responses=WRITE_ERRORS, tags=["domains"]
)
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
        f"/domains/{{domain_id}}/{action_name}",
        response_model=DomainPublic,
        responses=WRITE_ERRORS,
        tags=["domains"],
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
            return _ok(DomainPublic.of(d))

        return run_post(request, factory, principal, idempotency_key, None, run)


_domain_status_route("suspend", STATUS_SUSPENDED)
_domain_status_route("resume", STATUS_ACTIVE)


@router.delete(
    "/domains/{domain_id}", status_code=204, responses=DELETE_RESPONSES, tags=["domains"]
)
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
    return _deleted(removal.remove_maildirs(store=store, refs=refs))


# ---------------------------------------------------------------------------- alias domains
@router.get(
    "/domains/{domain_id}/aliases",
    response_model=list[DomainAliasPublic],
    responses=READ_ERRORS,
    tags=["domains"],
    summary="List the alias domains of a domain",
)
def list_domain_aliases(domain_id: Id, _: Reader, factory: FactoryDep) -> list[DomainAliasPublic]:
    with transaction(factory) as s:
        d = domains.get_domain(s, domain_id=domain_id)
        return [DomainAliasPublic.of(a) for a in sorted(d.domain_aliases, key=lambda a: a.id)]


@router.post(
    "/domains/{domain_id}/aliases",
    status_code=201,
    response_model=DomainAliasPublic,
    responses=WRITE_ERRORS,
    tags=["domains"],
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
        return _created(DomainAliasPublic.of(a), f"/api/v1/domains/{domain_id}/aliases/{a.id}")

    return run_post(request, factory, principal, idempotency_key, body, action)


@router.delete(
    "/domains/{domain_id}/aliases/{alias_id}",
    status_code=204,
    responses=WRITE_ERRORS,
    tags=["domains"],
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
    return _no_content()


# ================================================================================= mailboxes
@router.get(
    "/mailboxes", response_model=Page[MailboxPublic], responses=READ_ERRORS, tags=["mailboxes"]
)
def list_mailboxes(
    _: Reader,
    factory: FactoryDep,
    store: StoreDep,
    customer_id: IdFilter = None,
    domain_id: IdFilter = None,
    status: StatusFilter = None,
    search: Search = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[MailboxPublic]:
    """Mailboxes with their usage (bytes, messages), quota and last login."""
    return _mailbox_page(factory, store, customer_id, domain_id, status, search, cursor, limit)


def _mailbox_page(
    factory: sessionmaker[Session],
    store: MaildirStore,
    customer_id: int | None,
    domain_id: int | None,
    status: str | None,
    search: str | None,
    cursor: str | None,
    limit: int,
    *,
    must_exist: bool = False,
) -> Page[MailboxPublic]:
    return _page(
        factory,
        cursor,
        limit,
        lambda s, after, n: mailboxes.list_mailboxes(
            s,
            domain_id=domain_id,
            customer_id=customer_id,
            search=search,
            status=status,
            after_id=after,
            limit=n,
        ),
        lambda m: MailboxPublic.of(m, store),
        customer_must_exist=customer_id if must_exist else None,
    )


@router.post(
    "/mailboxes",
    status_code=201,
    response_model=MailboxPublic,
    responses=WRITE_ERRORS,
    tags=["mailboxes"],
)
def create_mailbox(
    body: MailboxCreate,
    request: Request,
    principal: Provisioner,
    factory: FactoryDep,
    store: StoreDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    def action(s: Session) -> tuple[int, BaseModel, dict[str, str]]:
        m = mailboxes.create_mailbox(
            s,
            actor=principal.actor,
            address=body.address,
            password=body.password,
            password_hash=body.password_hash,
            quota_bytes=body.quota_bytes,
            pop3_enabled=body.pop3_enabled,
        )
        s.flush()
        return _created(MailboxPublic.of(m, store), f"/api/v1/mailboxes/{m.id}")

    return run_post(request, factory, principal, idempotency_key, body, action)


@router.get(
    "/mailboxes/{mailbox_id}",
    response_model=MailboxPublic,
    responses=READ_ERRORS,
    tags=["mailboxes"],
)
def get_mailbox(mailbox_id: Id, _: Reader, factory: FactoryDep, store: StoreDep) -> BaseModel:
    return _read(
        factory, lambda s: MailboxPublic.of(mailboxes.get_mailbox(s, mailbox_id=mailbox_id), store)
    )


@router.patch(
    "/mailboxes/{mailbox_id}",
    response_model=MailboxPublic,
    responses=WRITE_ERRORS,
    tags=["mailboxes"],
)
def update_mailbox(
    mailbox_id: Id,
    body: MailboxUpdate,
    principal: Provisioner,
    factory: FactoryDep,
    store: StoreDep,
) -> BaseModel:
    with transaction(factory) as s:
        m = mailboxes.get_mailbox(s, mailbox_id=mailbox_id)
        if body.password is not None or body.password_hash is not None:
            m = mailboxes.set_password(
                s,
                actor=principal.actor,
                mailbox_id=mailbox_id,
                password=body.password,
                password_hash=body.password_hash,
            )
        if body.quota_bytes is not None or body.pop3_enabled is not None:
            m = mailboxes.update_mailbox(
                s,
                actor=principal.actor,
                mailbox_id=mailbox_id,
                quota_bytes=body.quota_bytes,
                pop3_enabled=body.pop3_enabled,
            )
        return MailboxPublic.of(m, store)


def _mailbox_status_route(action_name: str, status: str) -> None:
    @router.post(
        f"/mailboxes/{{mailbox_id}}/{action_name}",
        response_model=MailboxPublic,
        responses=WRITE_ERRORS,
        tags=["mailboxes"],
        name=f"{action_name}_mailbox",
        summary=f"{action_name.capitalize()} a mailbox (recorded as a lifecycle event)",
    )
    def change(
        mailbox_id: Id,
        request: Request,
        principal: Provisioner,
        factory: FactoryDep,
        store: StoreDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        def run(s: Session) -> tuple[int, BaseModel, dict[str, str]]:
            m = mailboxes.set_mailbox_status(
                s, actor=principal.actor, mailbox_id=mailbox_id, status=status
            )
            return _ok(MailboxPublic.of(m, store))

        return run_post(request, factory, principal, idempotency_key, None, run)


_mailbox_status_route("suspend", STATUS_SUSPENDED)
_mailbox_status_route("resume", STATUS_ACTIVE)


@router.delete(
    "/mailboxes/{mailbox_id}", status_code=204, responses=DELETE_RESPONSES, tags=["mailboxes"]
)
def delete_mailbox(
    mailbox_id: Id, principal: Provisioner, factory: FactoryDep, store: StoreDep
) -> Response:
    """Deletes the mailbox and its messages; its billing history (lifecycle events) stays."""
    with transaction(factory) as s:
        refs = removal.refs_of_mailbox(s, mailbox_id=mailbox_id)
        mailboxes.delete_mailbox(s, actor=principal.actor, mailbox_id=mailbox_id)
    return _deleted(removal.remove_maildirs(store=store, refs=refs))


# ================================================================================= aliases
@router.get("/aliases", response_model=Page[AliasPublic], responses=READ_ERRORS, tags=["aliases"])
def list_aliases(
    _: Reader,
    factory: FactoryDep,
    customer_id: IdFilter = None,
    domain_id: IdFilter = None,
    search: Search = None,
    cursor: Cursor = None,
    limit: Limit = DEFAULT_LIMIT,
) -> Page[AliasPublic]:
    return _alias_page(factory, customer_id, domain_id, search, cursor, limit)


def _alias_page(
    factory: sessionmaker[Session],
    customer_id: int | None,
    domain_id: int | None,
    search: str | None,
    cursor: str | None,
    limit: int,
    *,
    must_exist: bool = False,
) -> Page[AliasPublic]:
    return _page(
        factory,
        cursor,
        limit,
        lambda s, after, n: aliases.list_aliases(
            s, domain_id=domain_id, customer_id=customer_id, search=search, after_id=after, limit=n
        ),
        AliasPublic.of,
        customer_must_exist=customer_id if must_exist else None,
    )


@router.post(
    "/aliases",
    status_code=201,
    response_model=AliasPublic,
    responses=WRITE_ERRORS,
    tags=["aliases"],
)
def create_alias(
    body: AliasCreate,
    request: Request,
    principal: Provisioner,
    factory: FactoryDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    def action(s: Session) -> tuple[int, BaseModel, dict[str, str]]:
        a = aliases.create_alias(
            s, actor=principal.actor, address=body.address, targets=body.targets
        )
        s.flush()
        return _created(AliasPublic.of(a), f"/api/v1/aliases/{a.id}")

    return run_post(request, factory, principal, idempotency_key, body, action)


@router.get(
    "/aliases/{alias_id}", response_model=AliasPublic, responses=READ_ERRORS, tags=["aliases"]
)
def get_alias(alias_id: Id, _: Reader, factory: FactoryDep) -> BaseModel:
    return _read(factory, lambda s: AliasPublic.of(aliases.get_alias(s, alias_id=alias_id)))


@router.patch(
    "/aliases/{alias_id}", response_model=AliasPublic, responses=WRITE_ERRORS, tags=["aliases"]
)
def update_alias(
    alias_id: Id, body: AliasUpdate, principal: Provisioner, factory: FactoryDep
) -> BaseModel:
    with transaction(factory) as s:
        a = aliases.set_alias_targets(
            s, actor=principal.actor, alias_id=alias_id, targets=body.targets
        )
        return AliasPublic.of(a)


@router.delete("/aliases/{alias_id}", status_code=204, responses=WRITE_ERRORS, tags=["aliases"])
def delete_alias(alias_id: Id, principal: Provisioner, factory: FactoryDep) -> Response:
    with transaction(factory) as s:
        aliases.delete_alias(s, actor=principal.actor, alias_id=alias_id)
    return _no_content()
