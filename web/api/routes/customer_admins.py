"""A customer's own portal administrators (issue 15): list, create, delete.

API tokens stay the ISP's: a token is never scoped to one customer, so every route here is
for ISP tools (``read`` to list, ``provisioning`` to change). The administrator's password
is chosen by the caller (never answered back); the administrator logs in at the portal's
``/login``. An administrator asked for under another customer's path is "not found" (404).
"""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from app.db import transaction
from app.errors import NotFoundError
from app.models import CustomerAdmin
from app.services import customer_admins, customers
from app.services.audit import Actor
from web.api.auth import CustomerProvisioner, CustomerReader
from web.api.common import IdempotencyKey, run_post
from web.api.problems import ProblemRoute
from web.api.routes.common import READ_ERRORS, WRITE_ERRORS, Id, created, no_content
from web.api.schemas import _Input
from web.deps import FactoryDep

router = APIRouter(prefix="/customers", tags=["customer administrators"], route_class=ProblemRoute)


class CustomerAdminCreate(_Input):
    username: str = Field(min_length=1, max_length=64, description="[a-z0-9._-], lower-cased")
    password: str = Field(min_length=8, max_length=1024)


class CustomerAdminPublic(BaseModel):
    id: int
    customer_id: int
    username: str
    active: bool
    created_at: dt.datetime
    last_login_at: dt.datetime | None

    @classmethod
    def of(cls, a: CustomerAdmin) -> CustomerAdminPublic:
        return cls(
            id=a.id,
            customer_id=a.customer_id,
            username=a.username,
            active=a.active,
            created_at=a.created_at,
            last_login_at=a.last_login_at,
        )


class CustomerAdminList(BaseModel):
    items: list[CustomerAdminPublic]


def _of_customer(s: Session, customer_id: int, admin_id: int, actor: Actor) -> CustomerAdmin:
    customers.get_customer(s, customer_id=customer_id, actor=actor)
    admin = customer_admins.get_customer_admin(s, admin_id=admin_id, actor=actor)
    if admin.customer_id != customer_id:
        raise NotFoundError(f"no customer administrator with id {admin_id}", field="admin_id")
    return admin


@router.get("/{customer_id}/admins", response_model=CustomerAdminList, responses=READ_ERRORS)
def list_admins(
    customer_id: Id, principal: CustomerReader, factory: FactoryDep
) -> CustomerAdminList:
    with transaction(factory) as s:
        customers.get_customer(s, customer_id=customer_id, actor=principal.actor)
        rows = customer_admins.list_customer_admins(
            s, actor=principal.actor, customer_id=customer_id
        )
        return CustomerAdminList(items=[CustomerAdminPublic.of(a) for a in rows])


@router.post(
    "/{customer_id}/admins",
    status_code=201,
    response_model=CustomerAdminPublic,
    responses=WRITE_ERRORS,
)
def create_admin(
    customer_id: Id,
    body: CustomerAdminCreate,
    request: Request,
    principal: CustomerProvisioner,
    factory: FactoryDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    def action(s: Session) -> tuple[int, BaseModel, dict[str, str]]:
        a = customer_admins.create_customer_admin(
            s,
            actor=principal.actor,
            customer_id=customer_id,
            username=body.username,
            password=body.password,
        )
        return created(CustomerAdminPublic.of(a), f"/api/v1/customers/{customer_id}/admins/{a.id}")

    return run_post(request, factory, principal, idempotency_key, body, action)


@router.get(
    "/{customer_id}/admins/{admin_id}",
    response_model=CustomerAdminPublic,
    responses=READ_ERRORS,
)
def get_admin(
    customer_id: Id, admin_id: Id, principal: CustomerReader, factory: FactoryDep
) -> BaseModel:
    with transaction(factory) as s:
        return CustomerAdminPublic.of(_of_customer(s, customer_id, admin_id, principal.actor))


@router.delete("/{customer_id}/admins/{admin_id}", status_code=204, responses=WRITE_ERRORS)
def delete_admin(
    customer_id: Id, admin_id: Id, principal: CustomerProvisioner, factory: FactoryDep
) -> Response:
    with transaction(factory) as s:
        _of_customer(s, customer_id, admin_id, principal.actor)
        customer_admins.delete_customer_admin(s, actor=principal.actor, admin_id=admin_id)
    return no_content()
