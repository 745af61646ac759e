"""Bearer-token authentication and scope checks for the API (RFC 6750); never cookies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.db import transaction
from app.models import SCOPE_BILLING_READ, SCOPE_PROVISIONING, SCOPE_READ
from app.services import accounts
from app.services.audit import Actor
from web.api.problems import ApiProblem
from web.deps import FactoryDep, client_ip

REALM = 'Bearer realm="mailhost"'

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
    actor: Actor


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


def authenticate(
    request: Request,
    factory: FactoryDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    if credentials is None:
        raise _unauthorized(
            "a bearer token is required (Authorization: Bearer mh_...)", invalid=False
        )
    with transaction(factory) as session:  # verify_token may record last_used_at
        token = accounts.verify_token(session, token=credentials.credentials)
        if token is None:
            raise _unauthorized("the token is unknown, malformed or revoked", invalid=True)
        return Principal(
            token_id=token.id,
            name=token.name,
            scopes=frozenset(token.scope_list),
            actor=Actor("token", token.name, client_ip(request)),
        )


def require(scope: str) -> Any:
    """A dependency that authenticates and insists on ``scope`` (403 otherwise)."""

    def check_scope(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
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


Provisioner = Annotated[Principal, require(SCOPE_PROVISIONING)]
Reader = Annotated[Principal, require(SCOPE_READ)]
BillingReader = Annotated[Principal, require(SCOPE_BILLING_READ)]
