"""DKIM keys of a domain: list them with the records to publish, generate (or rotate), retire.

Scopes: ``read`` for GET, ``provisioning`` for the POSTs. A private key never leaves the
server through the API; the response carries the TXT record to publish instead.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from app.db import transaction
from app.models import DkimKey, Domain
from app.services import dkim as dkim_service
from app.services import domains
from app.services.dkim import DnsPolicy, DnsRecord
from web.api.auth import Provisioner, Reader
from web.api.common import IdempotencyKey, run_post
from web.api.problems import ProblemRoute, problem_responses
from web.deps import FactoryDep
from web.params import ID_MAX, ID_MIN

Id = Annotated[int, Path(ge=ID_MIN, le=ID_MAX)]
Selector = Annotated[str, Path(min_length=1, max_length=63)]

READ_ERRORS = problem_responses(401, 403, 404, 422, 503)
WRITE_ERRORS = problem_responses(400, 401, 403, 404, 409, 422, 503)

router = APIRouter(route_class=ProblemRoute, tags=["dkim"])


class DkimKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    selector: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        description="DNS label(s); default `mh<yyyymmdd>`. A selector is never reused.",
    )
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = Field(
        default="rsa-sha256", description="RSA-2048, or Ed25519 (RFC 8463)."
    )


class DnsRecordPublic(BaseModel):
    purpose: Literal["mx", "spf", "dkim", "dmarc"]
    type: str
    name: str = Field(description="Fully qualified, with the trailing dot.")
    value: str = Field(description="The record data; TXT text unquoted, as one string.")
    zone_text: str = Field(description="The data as a zone file takes it (TXT split at 255).")
    note: str
    selector: str | None = None

    @classmethod
    def of(cls, r: DnsRecord) -> DnsRecordPublic:
        return cls(
            purpose=r.purpose,
            type=r.type,
            name=r.name,
            value=r.value,
            zone_text=r.zone_text,
            note=r.note,
            selector=r.selector,
        )


class DkimKeyPublic(BaseModel):
    selector: str
    algorithm: Literal["rsa-sha256", "ed25519-sha256"]
    bits: int
    state: Literal["active", "published", "retired"] = Field(
        description="active: signs the domain's mail; published: rotated out, record kept "
        "until retired; retired: record withdrawn, private key erased."
    )
    record_name: str
    record_value: str = Field(description="The TXT record text (`v=DKIM1; k=...; p=...`).")
    created_at: dt.datetime
    retired_at: dt.datetime | None

    @classmethod
    def of(cls, domain: Domain, k: DkimKey) -> DkimKeyPublic:
        from app import dkim

        return cls(
            selector=k.selector,
            algorithm=k.algorithm,
            bits=k.key_bits,
            state=k.state,
            record_name=dkim.record_name(k.selector, domain.name),
            record_value=dkim.record_value(k.algorithm, k.public_key),
            created_at=k.created_at,
            retired_at=k.retired_at,
        )


class DomainDkimPublic(BaseModel):
    domain_id: int
    domain: str
    keys: list[DkimKeyPublic] = Field(description="Newest first, retired keys included.")
    records: list[DnsRecordPublic] = Field(description="What the domain's zone should hold.")


def _policy(request: Request) -> DnsPolicy:
    return DnsPolicy.from_settings(request.app.state.settings)


def _overview(s: Session, domain_id: int, policy: DnsPolicy) -> DomainDkimPublic:
    d = domains.get_domain(s, domain_id=domain_id)
    return DomainDkimPublic(
        domain_id=d.id,
        domain=d.name,
        keys=[DkimKeyPublic.of(d, k) for k in dkim_service.list_keys(s, domain_id=d.id)],
        records=[
            DnsRecordPublic.of(r)
            for r in dkim_service.recommended_records(s, domain_id=d.id, policy=policy)
        ],
    )


@router.get("/domains/{domain_id}/dkim", response_model=DomainDkimPublic, responses=READ_ERRORS)
def get_domain_dkim(
    domain_id: Id, request: Request, _: Reader, factory: FactoryDep
) -> DomainDkimPublic:
    with transaction(factory) as s:
        return _overview(s, domain_id, _policy(request))


@router.post(
    "/domains/{domain_id}/dkim",
    status_code=201,
    response_model=DkimKeyPublic,
    responses=WRITE_ERRORS,
    summary="Generate a signing key (rotates: the previous one stays published)",
)
def create_domain_dkim_key(
    domain_id: Id,
    request: Request,
    principal: Provisioner,
    factory: FactoryDep,
    body: DkimKeyCreate | None = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    given = body or DkimKeyCreate()

    def action(s: Session) -> tuple[int, BaseModel, dict[str, str]]:
        key = dkim_service.generate_key(
            s,
            actor=principal.actor,
            domain_id=domain_id,
            selector=given.selector,
            algorithm=given.algorithm,
        )
        return (
            201,
            DkimKeyPublic.of(key.domain, key),
            {"Location": f"/api/v1/domains/{domain_id}/dkim"},
        )

    return run_post(request, factory, principal, idempotency_key, given, action)


@router.post(
    "/domains/{domain_id}/dkim/{selector}/retire",
    response_model=DkimKeyPublic,
    responses=WRITE_ERRORS,
    summary="Retire a key: its record is withdrawn and its private key erased",
)
def retire_domain_dkim_key(
    domain_id: Id,
    selector: Selector,
    request: Request,
    principal: Provisioner,
    factory: FactoryDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    def action(s: Session) -> tuple[int, BaseModel, dict[str, str]]:
        key = dkim_service.retire_key(
            s, actor=principal.actor, domain_id=domain_id, selector=selector
        )
        return 200, DkimKeyPublic.of(key.domain, key), {}

    return run_post(request, factory, principal, idempotency_key, None, action)
