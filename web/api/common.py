"""Plumbing shared by the API routers: state access, cursors, pages and Idempotency-Key.

The store and the client address are the portal's too: they live in ``web.deps``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Generic, TypeVar

from fastapi import Header, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.errors import MailhostError, ValidationError
from app.models import IdempotencyRecord
from app.services.idempotency import request_fingerprint

if TYPE_CHECKING:
    from web.api.auth import Principal

T = TypeVar("T")
JSON = "application/json"


@contextmanager
def api_fields(**service_to_api: str) -> Iterator[None]:
    """Rename a service error's ``field`` to the name the API client used for that input."""
    try:
        yield
    except MailhostError as exc:
        if exc.field in service_to_api:
            exc.field = service_to_api[exc.field]
        raise


# ------------------------------------------------------------------------------ pagination
DEFAULT_LIMIT = 50
MAX_LIMIT = 200

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size (1-{MAX_LIMIT}).")]
Cursor = Annotated[
    str | None,
    Query(
        max_length=64,
        description="Opaque cursor from the previous page's `next_cursor`; omit for the first.",
    ),
]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    """The id after which the page starts. The cursor carries no filters: the filters of the
    request always apply, so a cursor cannot widen what a request may see."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, _, value = raw.partition(":")
        if kind != "id" or not value.isdigit() or len(value) > 18:
            raise ValueError(raw)
        return int(value)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ValidationError("invalid pagination cursor", field="cursor") from exc


def make_page(
    rows: Sequence[T], limit: int, id_of: Callable[[T], int]
) -> tuple[list[T], str | None]:
    """Trim a ``limit + 1`` fetch to ``limit`` rows and the cursor of the next page."""
    if len(rows) > limit:
        kept = list(rows[:limit])
        return kept, encode_cursor(id_of(kept[-1]))
    return list(rows), None


# ------------------------------------------------------------------------------ idempotency
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description=(
            "Retry-safe POST: the first response for this key (per token) is stored; a retry "
            "with the same key and the same body gets the same response without acting again "
            "(header `Idempotent-Replayed: true`); the same key with a different body is "
            "refused with 422. Only successful responses are stored."
        ),
    ),
]


# Body fields that hold credentials: they enter the stored fingerprint only as a keyed hash.
SECRET_FIELDS = frozenset({"password", "password_hash"})


def _request_hash(request: Request, payload: BaseModel | None) -> str:
    return request_fingerprint(
        secret=request.app.state.secret_key,
        method=request.method,
        path=request.url.path,
        body_fields=payload.model_dump(mode="json") if payload is not None else None,
        secret_fields=SECRET_FIELDS,
    )


def _json_response(status: int, text: str, headers: dict[str, str]) -> Response:
    return Response(content=text, status_code=status, media_type=JSON, headers=headers)


def run_post(
    request: Request,
    factory: sessionmaker[Session],
    principal: Principal,
    key: str | None,
    payload: BaseModel | None,
    action: Callable[[Session], tuple[int, BaseModel, dict[str, str]]],
) -> Response:
    """Run ``action`` in one transaction and answer its (status, body, headers).

    With an Idempotency-Key the stored record is written in the SAME transaction as the
    change, so either both commit or neither does. Two concurrent requests with one key: the
    loser's insert hits the unique (token_id, key) constraint, its whole transaction (change
    included) rolls back, and it answers with the winner's stored response.
    """
    from web.api.problems import ApiProblem

    if key is None:
        with transaction(factory) as session:
            status, body, headers = action(session)
            text = body.model_dump_json()
        return _json_response(status, text, headers)

    request_hash = _request_hash(request, payload)
    for attempt in (1, 2):
        failure = False  # the action itself failed (not our record insert)
        try:
            with transaction(factory) as session:
                record = session.scalar(
                    select(IdempotencyRecord).where(
                        IdempotencyRecord.token_id == principal.token_id,
                        IdempotencyRecord.key == key,
                    )
                )
                if record is not None:
                    if record.request_hash != request_hash:
                        raise ApiProblem(
                            422,
                            "idempotency-key-reused",
                            "Idempotency key reused",
                            "this Idempotency-Key was used for a different request",
                            field="Idempotency-Key",
                        )
                    return _replayed(record)
                try:
                    status, body, headers = action(session)
                except (MailhostError, IntegrityError):
                    failure = True
                    raise
                text = body.model_dump_json()
                session.add(
                    IdempotencyRecord(
                        token_id=principal.token_id,
                        key=key,
                        request_hash=request_hash,
                        status_code=status,
                        response_body=json.dumps({"body": json.loads(text), "headers": headers}),
                    )
                )
                session.flush()
            return _json_response(status, text, headers)
        except (MailhostError, IntegrityError):
            # A twin request with the same key may have committed while this one ran, so its
            # change now clashes with ours ("already exists"): answer with the twin's response.
            replay = _replay(factory, principal, key, request_hash)
            if replay is not None:
                return replay
            if attempt == 2 or failure:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _replay(
    factory: sessionmaker[Session], principal: Principal, key: str, request_hash: str
) -> Response | None:
    with transaction(factory) as session:
        record = session.scalar(
            select(IdempotencyRecord).where(
                IdempotencyRecord.token_id == principal.token_id,
                IdempotencyRecord.key == key,
            )
        )
        if record is None or record.request_hash != request_hash:
            return None
        return _replayed(record)


def _replayed(record: IdempotencyRecord) -> Response:
    stored = json.loads(record.response_body)
    return _json_response(
        record.status_code,
        json.dumps(stored["body"]),
        {**stored["headers"], "Idempotent-Replayed": "true"},
    )
