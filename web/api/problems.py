"""RFC 9457 problem documents: the ONE place API errors become HTTP statuses.

Mapping of ``app.errors`` (documented in the OpenAPI description too):

=======================  ======  ===================================================
ValidationError           422    the input is malformed; ``field`` names it
NotFoundError             404    no such object (also: another customer's object
                                 asked for under a customer-scoped path)
ConflictError             409    already exists / clashes with existing data
LimitExceededError        409    a domain limit (mailboxes, total quota) would be
                                 exceeded: the request is well-formed, the current
                                 state refuses it, like any other conflict
PermissionDeniedError     403
TemporaryError            503    with ``Retry-After``
RequestValidationError    422    FastAPI's own input validation, one entry per field
sqlalchemy IntegrityError 409    a uniqueness race between two concurrent requests
sqlalchemy DataError      422    a value the database cannot store
OperationalError          503    the database did not answer
=======================  ======  ===================================================

Handlers are attached to the API's routes (``ProblemRoute``), so the portal's HTML error pages
never see API errors, and, for errors raised before routing (404 / 405 on unknown ``/api``
paths), to the application for paths under ``/api/`` only, delegating anything else to the
handler that was installed before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import errors

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
API_PREFIX = "/api/"
TYPE_BASE = "urn:mailhost:problem:"


class FieldError(BaseModel):
    field: str = Field(description="The input at fault: a body field, query or header name.")
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str = Field(description="A URI identifying the problem type.")
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    field: str | None = Field(default=None, description="The main input at fault, if any.")
    errors: list[FieldError] = Field(default_factory=list)


class ApiProblem(Exception):
    """Raised by API code for protocol-level refusals (401, 403, 406...)."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.field = field
        self.headers = dict(headers or {})


_SERVICE_ERRORS: Sequence[tuple[type[errors.MailhostError], int, str, str]] = (
    (errors.ValidationError, 422, "validation", "Invalid input"),
    (errors.NotFoundError, 404, "not-found", "Not found"),
    (errors.LimitExceededError, 409, "limit-exceeded", "Limit exceeded"),
    (errors.ConflictError, 409, "conflict", "Conflict"),
    (errors.PermissionDeniedError, 403, "forbidden", "Forbidden"),
    (errors.TemporaryError, 503, "temporarily-unavailable", "Temporarily unavailable"),
)

_HTTP_TITLES = {
    400: ("bad-request", "Bad request"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    406: ("not-acceptable", "Not acceptable"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
}


def problem_response(
    request: Request,
    *,
    status: int,
    slug: str,
    title: str,
    detail: str | None,
    field: str | None = None,
    field_errors: Sequence[FieldError] = (),
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    if field is not None and not field_errors:
        field_errors = [FieldError(field=field, message=detail or title)]
    body = Problem(
        type=TYPE_BASE + slug,
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path,
        field=field,
        errors=list(field_errors),
    )
    return JSONResponse(
        body.model_dump(mode="json"),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=dict(headers or {}),
    )


def _field_name(loc: Sequence[Any]) -> str:
    # ("body", "quota_bytes") -> "quota_bytes"; ("query", "limit") -> "limit";
    # ("header", "idempotency-key") -> "Idempotency-Key".
    parts = [str(p) for p in loc]
    if parts and parts[0] == "header" and len(parts) > 1:
        return "-".join(word.capitalize() for word in parts[1].split("-"))
    if parts and parts[0] in ("body", "query", "path", "cookie"):
        parts = parts[1:]
    return ".".join(parts) or "body"


def problem_for(request: Request, exc: BaseException) -> Response | None:
    """The problem response for ``exc``, or None if it is not an error we map."""
    if isinstance(exc, ApiProblem):
        return problem_response(
            request,
            status=exc.status,
            slug=exc.slug,
            title=exc.title,
            detail=exc.detail,
            field=exc.field,
            headers=exc.headers,
        )
    if isinstance(exc, errors.MailhostError):
        for cls, status, slug, title in _SERVICE_ERRORS:
            if isinstance(exc, cls):
                headers = {"Retry-After": "5"} if status == 503 else None
                return problem_response(
                    request,
                    status=status,
                    slug=slug,
                    title=title,
                    detail=exc.message,
                    field=exc.field,
                    headers=headers,
                )
        return None
    if isinstance(exc, RequestValidationError):
        field_errors = [
            FieldError(field=_field_name(e.get("loc", ())), message=str(e.get("msg", "invalid")))
            for e in exc.errors()
        ]
        first = field_errors[0] if field_errors else None
        return problem_response(
            request,
            status=422,
            slug="validation",
            title="Invalid input",
            detail=f"{first.field}: {first.message}" if first else "invalid input",
            field=first.field if first else None,
            field_errors=field_errors,
        )
    if isinstance(exc, StarletteHTTPException):
        slug, title = _HTTP_TITLES.get(exc.status_code, ("http-error", "HTTP error"))
        return problem_response(
            request,
            status=exc.status_code,
            slug=slug,
            title=title,
            detail=str(exc.detail),
            headers=exc.headers,
        )
    if isinstance(exc, IntegrityError):
        # A uniqueness race the services' own checks could not see (two requests at once).
        return problem_response(
            request,
            status=409,
            slug="conflict",
            title="Conflict",
            detail="the change conflicts with a concurrent change; retry",
        )
    if isinstance(exc, DataError):
        # The database refused a value the schemas let through (e.g. a NUL character).
        return problem_response(
            request,
            status=422,
            slug="validation",
            title="Invalid input",
            detail="a value cannot be stored (invalid characters or out of range)",
        )
    if isinstance(exc, OperationalError | PoolTimeoutError):
        # The database did not answer: a transient failure the client may retry.
        log.warning("database unavailable on %s: %s", request.url.path, exc)
        return problem_response(
            request,
            status=503,
            slug="temporarily-unavailable",
            title="Temporarily unavailable",
            detail="the database is unavailable, try again later",
            headers={"Retry-After": "5"},
        )
    return None


class ProblemRoute(APIRoute):
    """An APIRoute whose errors (from dependencies or the endpoint) become problem documents."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def problem_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                response = problem_for(request, exc)
                if response is None:
                    raise
                return response

        return problem_handler


def install_problem_handlers(app: FastAPI) -> None:
    """App-level handlers for errors raised outside our routes, scoped to ``/api/`` paths."""
    for exc_class in (StarletteHTTPException, RequestValidationError):
        previous = app.exception_handlers.get(exc_class)

        async def handler(
            request: Request,
            exc: Exception,
            _previous: Any = previous,
        ) -> Response:
            if request.url.path.startswith(API_PREFIX):
                response = problem_for(request, exc)
                if response is not None:
                    return response
            if _previous is None:
                raise exc
            result: Response = await _previous(request, exc)
            return result

        app.add_exception_handler(exc_class, handler)


# Every API operation documents these; ``install_api`` moves their schema to
# application/problem+json in the served OpenAPI document.
def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "The request body could not be read (not UTF-8 JSON)",
        401: "No, malformed or revoked bearer token",
        403: "The token lacks the scope this operation needs",
        404: "No such object",
        406: "The requested media type cannot be produced",
        409: "Conflict with existing data, or a limit would be exceeded",
        422: "Invalid input; `field` / `errors` name the input at fault",
        503: "Temporarily unavailable; retry later",
    }
    return {s: {"model": Problem, "description": descriptions[s]} for s in statuses}


def use_problem_media_type(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite 4xx/5xx responses of /api paths to application/problem+json (in place)."""
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith(API_PREFIX):
            continue
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if str(status)[0] in "45" and "application/json" in content:
                    response["content"] = {PROBLEM_MEDIA_TYPE: content["application/json"]}
    return schema
