"""What the entity routers share: id and filter parameters, documented errors, pages, replies."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Protocol, TypeVar

from fastapi import Path, Query, Response
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.services import customers, removal
from app.services.audit import Actor
from web.api.common import (
    Page,
    decode_cursor,
    make_page,
)
from web.api.problems import problem_responses
from web.api.schemas import (
    Status,
)
from web.params import ID_MAX, ID_MIN, SEARCH_MAX_LENGTH

# The range and the search length are the portal's too (web/params.py).
Id = Annotated[int, Path(ge=ID_MIN, le=ID_MAX)]
IdFilter = Annotated[int | None, Query(ge=ID_MIN, le=ID_MAX)]
StatusFilter = Annotated[Status | None, Query()]
Search = Annotated[
    str | None, Query(max_length=SEARCH_MAX_LENGTH, description="Substring of the name.")
]
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


class HasId(Protocol):
    @property
    def id(self) -> int: ...


Row = TypeVar("Row", bound=HasId)
Item = TypeVar("Item", bound=BaseModel)


def no_content() -> Response:
    return Response(status_code=204)


def deleted(leftovers: Sequence[removal.LeftoverMaildir]) -> Response:
    """204, or 200 with the warnings when files of the deleted mailboxes stayed on disk: the
    deletion happened either way, so it is never an error status."""
    if not leftovers:
        return no_content()
    body = DeletionWarnings(warnings=[leftover.message for leftover in leftovers])
    return Response(body.model_dump_json(), status_code=200, media_type="application/json")


def created(body: BaseModel, location: str) -> tuple[int, BaseModel, dict[str, str]]:
    return 201, body, {"Location": location}


def ok(body: BaseModel) -> tuple[int, BaseModel, dict[str, str]]:
    return 200, body, {}


def read_one(factory: sessionmaker[Session], build: Callable[[Session], BaseModel]) -> BaseModel:
    with transaction(factory) as session:
        return build(session)


def page_of(
    factory: sessionmaker[Session],
    cursor: str | None,
    limit: int,
    fetch: Callable[[Session, int | None, int], Sequence[Row]],
    public: Callable[[Row], Item],
    *,
    customer_must_exist: int | None = None,
    actor: Actor | None = None,
) -> Page[Item]:
    """One page of a list: ``fetch(session, after_id, limit + 1)`` rows, shown as ``public``.

    ``customer_must_exist`` is for the ``/customers/{id}/...`` views: an unknown customer is a
    404 there, not an empty page.
    """
    after = decode_cursor(cursor)
    with transaction(factory) as s:
        if customer_must_exist is not None:
            customers.get_customer(s, customer_id=customer_must_exist, actor=actor)
        rows = fetch(s, after, limit + 1)
        kept, next_cursor = make_page(rows, limit, lambda row: row.id)
        return Page[Item](items=[public(row) for row in kept], next_cursor=next_cursor)
