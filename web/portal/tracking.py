"""The Message tracking page: search message events by address, queue id, client address and
time; every operator may use it (support too), nobody can change anything here."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.errors import ValidationError
from app.services import tracking
from web.deps import SessionDep, SettingsDep
from web.params import SearchText
from web.portal.auth import AuthDep
from web.portal.common import PAGE_SIZE
from web.portal.render import render

router = APIRouter()


def _moment(text: str, *, field: str) -> dt.datetime | None:
    """A ``datetime-local`` value (or any ISO 8601 time); without a zone it is UTC."""
    text = text.strip()
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            f"{field}: give a time such as 2026-12-03T14:00", field=field
        ) from None


@router.get("/tracking")
def tracking_search(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    auth: AuthDep,
    address: SearchText = "",
    queue_id: SearchText = "",
    client_ip: SearchText = "",
    since: SearchText = "",
    until: SearchText = "",
    cursor: SearchText = "",
) -> HTMLResponse:
    filters = {
        "address": address,
        "queue_id": queue_id,
        "client_ip": client_ip,
        "since": since,
        "until": until,
    }
    events: list[object] = []
    next_cursor: str | None = None
    error = ""
    searched = any(value.strip() for value in filters.values())
    if searched:
        try:
            query = tracking.normalise_query(
                address=address,
                queue_id=queue_id,
                client_ip=client_ip,
                since=_moment(since, field="since"),
                until=_moment(until, field="until"),
            )
            found, next_cursor = tracking.search_page(
                session, query=query, cursor=cursor or None, limit=PAGE_SIZE
            )
            events = list(found)
        except ValidationError as exc:
            error = exc.message
    return render(
        request,
        "tracking/search.html",
        {
            "filters": filters,
            "events": events,
            "searched": searched,
            "error": error,
            "next_cursor": next_cursor,
            "retention_days": settings.tracking_retention_days,
        },
        status=400 if error else 200,
    )
