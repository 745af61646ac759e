"""Mailboxes, with their usage (bytes, messages), quota and last login.

Thin router: see ``web.api.routes`` for the conventions."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.maildir import MaildirStore
from app.models import STATUS_ACTIVE, STATUS_SUSPENDED
from app.services import domains, mailboxes, removal
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
    DELETE_RESPONSES,
    READ_ERRORS,
    WRITE_ERRORS,
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
from web.api.schemas import (
    MailboxCreate,
    MailboxPublic,
    MailboxUpdate,
)
from web.deps import FactoryDep, StoreDep

router = APIRouter(prefix="/mailboxes", tags=["mailboxes"], route_class=ProblemRoute)


@router.get("", response_model=Page[MailboxPublic], responses=READ_ERRORS)
def list_mailboxes(
    principal: CustomerReader,
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
    return mailbox_page(
        factory, store, customer_id, domain_id, status, search, cursor, limit, principal.actor
    )


def mailbox_page(
    factory: sessionmaker[Session],
    store: MaildirStore,
    customer_id: int | None,
    domain_id: int | None,
    status: str | None,
    search: str | None,
    cursor: str | None,
    limit: int,
    actor: Actor,
    *,
    must_exist: bool = False,
) -> Page[MailboxPublic]:
    """A customer's token sees its own customer only (another customer or domain: 404)."""
    if domain_id is not None and actor.customer_id is not None:
        with transaction(factory) as s:
            domains.get_domain(s, domain_id=domain_id, actor=actor)
    customer_id = customer_scope(actor, customer_id)
    return page_of(
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
        actor=actor,
    )


@router.post(
    "",
    status_code=201,
    response_model=MailboxPublic,
    responses=WRITE_ERRORS,
)
def create_mailbox(
    body: MailboxCreate,
    request: Request,
    principal: CustomerProvisioner,
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
        return created(MailboxPublic.of(m, store), f"/api/v1/mailboxes/{m.id}")

    return run_post(request, factory, principal, idempotency_key, body, action)


@router.get(
    "/{mailbox_id}",
    response_model=MailboxPublic,
    responses=READ_ERRORS,
)
def get_mailbox(
    mailbox_id: Id, principal: CustomerReader, factory: FactoryDep, store: StoreDep
) -> BaseModel:
    return read_one(
        factory,
        lambda s: MailboxPublic.of(
            mailboxes.get_mailbox(s, mailbox_id=mailbox_id, actor=principal.actor), store
        ),
    )


@router.patch(
    "/{mailbox_id}",
    response_model=MailboxPublic,
    responses=WRITE_ERRORS,
)
def update_mailbox(
    mailbox_id: Id,
    body: MailboxUpdate,
    principal: CustomerProvisioner,
    factory: FactoryDep,
    store: StoreDep,
) -> BaseModel:
    with transaction(factory) as s:
        m = mailboxes.get_mailbox(s, mailbox_id=mailbox_id, actor=principal.actor)
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
        f"/{{mailbox_id}}/{action_name}",
        response_model=MailboxPublic,
        responses=WRITE_ERRORS,
        name=f"{action_name}_mailbox",
        summary=f"{action_name.capitalize()} a mailbox (recorded as a lifecycle event)",
    )
    def change(
        mailbox_id: Id,
        request: Request,
        principal: CustomerProvisioner,
        factory: FactoryDep,
        store: StoreDep,
        idempotency_key: IdempotencyKey = None,
    ) -> Response:
        def run(s: Session) -> tuple[int, BaseModel, dict[str, str]]:
            m = mailboxes.set_mailbox_status(
                s, actor=principal.actor, mailbox_id=mailbox_id, status=status
            )
            return ok(MailboxPublic.of(m, store))

        return run_post(request, factory, principal, idempotency_key, None, run)


_mailbox_status_route("suspend", STATUS_SUSPENDED)
_mailbox_status_route("resume", STATUS_ACTIVE)


@router.delete("/{mailbox_id}", status_code=204, responses=DELETE_RESPONSES)
def delete_mailbox(
    mailbox_id: Id, principal: CustomerProvisioner, factory: FactoryDep, store: StoreDep
) -> Response:
    """Deletes the mailbox and its messages; its billing history (lifecycle events) stays."""
    with transaction(factory) as s:
        refs = removal.refs_of_mailbox(s, mailbox_id=mailbox_id)
        mailboxes.delete_mailbox(s, actor=principal.actor, mailbox_id=mailbox_id)
    return deleted(removal.remove_maildirs(store=store, refs=refs))
