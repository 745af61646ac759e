"""The audit log page: who did what to which object, when and from where, with filters."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from app.models import AuditEntry
from web.deps import SessionDep
from web.params import BigId, SearchText
from web.portal.auth import AuthDep
from web.portal.common import PAGE_SIZE, split_page
from web.portal.render import render

router = APIRouter()


@router.get("/audit")
def audit_list(
    request: Request,
    session: SessionDep,
    auth: AuthDep,
    object_type: SearchText = "",
    object: SearchText = "",  # noqa: A002
    actor: SearchText = "",
    before: BigId | None = None,
) -> HTMLResponse:
    """Newest first, keyset-paged by id. ``object`` matches the object's id or its name."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(PAGE_SIZE + 1)
    if object_type.strip():
        query = query.where(AuditEntry.object_type == object_type.strip())
    if object.strip():
        term = object.strip()
        query = query.where(
            (AuditEntry.object_id == term) | AuditEntry.object_name.contains(term, autoescape=True)
        )
    if actor.strip():
        query = query.where(AuditEntry.actor == actor.strip())
    if before is not None:
        query = query.where(AuditEntry.id < before)
    rows, next_before = split_page(session.scalars(query).all())
    filters = {"object_type": object_type, "object": object, "actor": actor}
    return render(
        request,
        "audit/list.html",
        {
            "entries": rows,
            "filters": filters,
            "next_before": next_before,
            "object_types": [
                "customer",
                "domain",
                "mailbox",
                "alias",
                "operator",
                "token",
                "queue",
            ],
        },
    )
