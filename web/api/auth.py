"""Bearer-token authentication and scope checks for the API (RFC 6750); never cookies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.models import SCOPE_BILLING_READ, SCOPE_PROVISIONING, SCOPE_QUEUE, SCOPE_READ
from app.services import accounts
from app.services.audit import Actor
from web.api.problems import ApiProblem
from web.deps import FactoryDep, client_ip

REALM = 'Bearer realm="mailhost"'
# Where ``web.limits`` leaves the principal it verified before reading a request body.
PRINCIPAL_STATE = "api_principal"

# Only the Authorization header is read: a portal session cookie never authenticates the API,
# and a token is never accepted from a cookie or a query parameter (RFC 6750 section 2.3
# discourages URI tokens; they end up in logs).
bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="bearerToken",
    description="An API token (`mh_...`) created in the portal or with `mailhost token create`.",
)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated token, detached from any session."""

    token_id: int
    name: str
    scopes: frozenset[str]
    actor: Actor  # carries ``customer_id`` for a customer's token (app/services/tenancy.py)

    @property
    def customer_id(self) -> int | None:
        """The customer a customer-bound token belongs to; None for the ISP's tokens."""
        return self.actor.customer_id


def _unauthorized(detail: str, *, invalid: bool) -> ApiProblem:
    # RFC 6750 section 3: no credentials -> just the challenge; bad ones -> error=invalid_token.
    challenge = f'{REALM}, error="invalid_token"' if invalid else REALM
    return ApiProblem(
        401,
        "unauthorized",
        "Unauthorized",
        detail,
        field="Authorization",
        headers={"WWW-Authenticate": challenge},
    )


def principal_for_token(factory: sessionmaker[Session], token: str, ip: str | None) -> Principal:
    with transaction(factory) as session:  # verify_token may record last_used_at
        row = accounts.verify_token(session, token=token)
        if row is None:
            raise _unauthorized("the token is unknown, malformed or revoked", invalid=True)
        return Principal(
            token_id=row.id,
            name=row.name,
            scopes=frozenset(row.scope_list),
            actor=Actor("token", row.name, ip, customer_id=row.customer_id),
        )


def principal_for_header(
    factory: sessionmaker[Session], authorization: str | None, ip: str | None
) -> Principal:
    """The same check as ``authenticate``, from the raw header (before any body is read)."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized(
            "a bearer token is required (Authorization: Bearer mh_...)", invalid=False
        )
    return principal_for_token(factory, token.strip(), ip)


def authenticate(
    request: Request,
    factory: FactoryDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    verified = getattr(request.state, PRINCIPAL_STATE, None)
    if isinstance(verified, Principal):
        return verified
    if credentials is None:
        raise _unauthorized(
            "a bearer token is required (Authorization: Bearer mh_...)", invalid=False
        )
    return principal_for_token(factory, credentials.credentials, client_ip(request))


def require(scope: str, *, customer_tokens: bool = False) -> Any:
    """A dependency that authenticates and insists on ``scope`` (403 otherwise).

    Deny by default: a customer's token (``customer_id`` set) gets 403 on every route that
    does not say ``customer_tokens=True``, whatever the ids in the path (so the answer never
    tells whether an object exists). Routes that do say so pass the token's actor to every
    service lookup, which answers "not found" for another customer's ids (404)."""

    def check_scope(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if principal.customer_id is not None and not customer_tokens:
            raise ApiProblem(
                403,
                "isp-only",
                "Forbidden",
                "this route is for the ISP's own tokens; a customer's token cannot use it",
            )
        if scope not in principal.scopes:
            raise ApiProblem(
                403,
                "insufficient-scope",
                "Forbidden",
                f"this token lacks the {scope!r} scope",
                headers={
                    "WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{scope}"'
                },
            )
        return principal

    return Depends(check_scope)


# ISP-only (a customer's token gets 403):
Provisioner = Annotated[Principal, require(SCOPE_PROVISIONING)]
Reader = Annotated[Principal, require(SCOPE_READ)]
BillingReader = Annotated[Principal, require(SCOPE_BILLING_READ)]
QueueOperator = Annotated[Principal, require(SCOPE_QUEUE)]
# Also open to a customer's token, for that customer's objects only (404 for the others):
CustomerProvisioner = Annotated[Principal, require(SCOPE_PROVISIONING, customer_tokens=True)]
CustomerReader = Annotated[Principal, require(SCOPE_READ, customer_tokens=True)]
CustomerBillingReader = Annotated[Principal, require(SCOPE_BILLING_READ, customer_tokens=True)]
