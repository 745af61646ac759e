"""Scanning policy of customers and domains, and the domains' allow and block lists.

Scopes: ``read`` for GET, ``provisioning`` for changes. In a PATCH body a field that is absent
stays as it is, ``null`` clears it (inherited again: a domain from its customer, a customer from
the platform defaults), a value sets it.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat
from sqlalchemy.orm import Session

from app.db import transaction
from app.errors import ValidationError
from app.scanning.decision import ScanPolicy
from app.services import customers, domains
from app.services import scan_policy as policies
from app.services.scan_policy import MAX_SCORE, MAX_SUBJECT_TAG, PolicyChange, Scope
from web.api.auth import Provisioner, Reader
from web.api.problems import ProblemRoute, problem_responses
from web.deps import FactoryDep, SettingsDep
from web.params import Id

Score = Annotated[
    StrictFloat, Field(ge=-MAX_SCORE, le=MAX_SCORE)
]  # strict: a JSON integer is accepted, true and "1" are not
READ_ERRORS = problem_responses(401, 403, 404, 422, 503)
WRITE_ERRORS = problem_responses(400, 401, 403, 404, 409, 422, 503)

router = APIRouter(route_class=ProblemRoute, tags=["scanning"])


class ScanPolicyPublic(BaseModel):
    reject_score: float = Field(description="Refused 550 5.7.1 at or above this rspamd score.")
    tag_score: float = Field(description="Stored with X-Spam-Status: Yes at or above this.")
    subject_tag: str = Field(description="Subject prefix of tagged mail ('' for none).")
    greylisting: bool
    own: dict[str, float | str | bool | None] = Field(
        description="The scope's own values; null: inherited."
    )


class ScanPolicyUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    reject_score: Score | None = None
    tag_score: Score | None = None
    subject_tag: Annotated[str, Field(max_length=MAX_SUBJECT_TAG)] | None = None
    greylisting: StrictBool | None = None


class ScanListEntryPublic(BaseModel):
    list: Literal["allow", "block"]
    kind: Literal["sender", "domain", "network"]
    value: str


class ScanListEntryCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    value: Annotated[str, Field(min_length=1, max_length=320)] = Field(
        description="A sender address, a sender domain (and its subdomains) or a network (CIDR)."
    )


def _change(body: ScanPolicyUpdate) -> PolicyChange:
    def given(name: str) -> object:
        value = getattr(body, name)
        if name.endswith("_score") and isinstance(value, float) and not math.isfinite(value):
            raise ValidationError(f"{name} must be a finite number", field=name)
        return value if name in body.model_fields_set else ...

    return PolicyChange(
        reject_score=given("reject_score"),  # type: ignore[arg-type]
        tag_score=given("tag_score"),  # type: ignore[arg-type]
        subject_tag=given("subject_tag"),  # type: ignore[arg-type]
        greylisting=given("greylisting"),  # type: ignore[arg-type]
    )


def _public(s: Session, scope: Scope, scope_id: int, defaults: ScanPolicy) -> ScanPolicyPublic:
    if scope == "domain":
        effective = policies.domain_policy(s, domain_id=scope_id, defaults=defaults)
    else:
        customers.get_customer(s, customer_id=scope_id)
        effective = policies.customer_policy(s, customer_id=scope_id, defaults=defaults)
    own = policies.own_override(s, scope=scope, scope_id=scope_id)
    return ScanPolicyPublic(
        reject_score=effective.reject_score,
        tag_score=effective.tag_score,
        subject_tag=effective.subject_tag,
        greylisting=effective.greylisting,
        own=own,
    )


def _register_policy(scope: Scope, prefix: str) -> None:
    @router.get(
        f"/{prefix}/{{scope_id}}/scan-policy",
        response_model=ScanPolicyPublic,
        responses=READ_ERRORS,
        name=f"get_{scope}_scan_policy",
    )
    def get_policy(
        scope_id: Id, _: Reader, factory: FactoryDep, settings: SettingsDep
    ) -> ScanPolicyPublic:
        with transaction(factory) as s:
            return _public(s, scope, scope_id, policies.defaults_from(settings))

    @router.patch(
        f"/{prefix}/{{scope_id}}/scan-policy",
        response_model=ScanPolicyPublic,
        responses=WRITE_ERRORS,
        name=f"update_{scope}_scan_policy",
    )
    def update_policy(
        scope_id: Id,
        body: ScanPolicyUpdate,
        principal: Provisioner,
        factory: FactoryDep,
        settings: SettingsDep,
    ) -> ScanPolicyPublic:
        with transaction(factory) as s:
            policies.set_override(
                s, actor=principal.actor, scope=scope, scope_id=scope_id, change=_change(body)
            )
            return _public(s, scope, scope_id, policies.defaults_from(settings))


_register_policy("domain", "domains")
_register_policy("customer", "customers")


@router.get(
    "/domains/{domain_id}/scan-lists",
    response_model=list[ScanListEntryPublic],
    responses=READ_ERRORS,
)
def get_scan_lists(domain_id: Id, _: Reader, factory: FactoryDep) -> list[ScanListEntryPublic]:
    with transaction(factory) as s:
        domains.get_domain(s, domain_id=domain_id)
        return [
            ScanListEntryPublic(list=e.list_name, kind=e.kind, value=e.value)
            for e in policies.list_entries(s, domain_id=domain_id)
        ]


@router.post(
    "/domains/{domain_id}/scan-lists/{list_name}",
    response_model=ScanListEntryPublic,
    status_code=201,
    responses=WRITE_ERRORS,
)
def add_scan_list_entry(
    domain_id: Id,
    list_name: Literal["allow", "block"],
    body: ScanListEntryCreate,
    principal: Provisioner,
    factory: FactoryDep,
) -> ScanListEntryPublic:
    with transaction(factory) as s:
        entry = policies.add_list_entry(
            s, actor=principal.actor, domain_id=domain_id, list_name=list_name, value=body.value
        )
        return ScanListEntryPublic(list=list_name, kind=entry.kind, value=entry.value)


@router.delete(
    "/domains/{domain_id}/scan-lists/{list_name}", status_code=204, responses=WRITE_ERRORS
)
def remove_scan_list_entry(
    domain_id: Id,
    list_name: Literal["allow", "block"],
    value: Annotated[str, Query(min_length=1, max_length=320)],
    principal: Provisioner,
    factory: FactoryDep,
) -> Response:
    with transaction(factory) as s:
        policies.remove_list_entry(
            s, actor=principal.actor, domain_id=domain_id, list_name=list_name, value=value
        )
    return Response(status_code=204)
