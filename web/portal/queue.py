"""The Queue page: outbound messages with filters and keyset paging, one message's recipients
with their last remote reply, and the admins' retry / hold / release / delete (audited)."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from app.errors import ConflictError, ValidationError
from app.models import RCPT_STATES, OutboundMessage, utcnow
from app.services import queue_admin
from app.spool import SpoolStore
from web.deps import SessionDep, SettingsDep
from web.params import Id, SearchText
from web.portal.auth import AdminDep, AuthDep, FormDep
from web.portal.common import PAGE_SIZE, redirect, split_page
from web.portal.errors import PortalError
from web.portal.render import render

router = APIRouter()

# The age filter's choices: value -> (label, seconds).
AGES: dict[str, tuple[str, int]] = {
    "5m": ("older than 5 minutes", 300),
    "1h": ("older than 1 hour", 3600),
    "4h": ("older than 4 hours", 4 * 3600),
    "1d": ("older than 1 day", 86400),
    "3d": ("older than 3 days", 3 * 86400),
}
# ``?done=`` after an action; shown by base.html through DONE_MESSAGES.
ACTIONS = ("retry", "hold", "release")


@router.get("/queue")
def queue_list(
    request: Request,
    session: SessionDep,
    auth: AuthDep,
    state: str = "",
    domain: SearchText = "",
    sender: SearchText = "",
    age: str = "",
    after: Id | None = None,
) -> HTMLResponse:
    if state and state not in RCPT_STATES:
        raise PortalError(400, "Request refused", f"unknown state {state!r}")
    if age and age not in AGES:
        raise PortalError(400, "Request refused", f"unknown age {age!r}")
    older_than = utcnow() - dt.timedelta(seconds=AGES[age][1]) if age else None
    try:
        rows = queue_admin.list_queue(
            session,
            actor=auth.actor,
            state=state or None,
            domain=domain.strip() or None,
            sender=sender.strip() or None,
            older_than=older_than,
            after_id=after,
            limit=PAGE_SIZE + 1,
        )
    except ValidationError as exc:
        raise PortalError(400, "Request refused", exc.message) from exc
    page, next_after = split_page(rows)
    return render(
        request,
        "queue/list.html",
        {
            "summaries": page,
            "filters": {"state": state, "domain": domain, "sender": sender, "age": age},
            "states": RCPT_STATES,
            "ages": AGES,
            "next_after": next_after,
        },
    )


def _detail(
    request: Request, message: OutboundMessage, *, error: str = "", status: int = 200
) -> HTMLResponse:
    return render(request, "queue/detail.html", {"message": message, "error": error}, status=status)


@router.get("/queue/{queue_id}")
def queue_detail(
    request: Request, session: SessionDep, auth: AuthDep, queue_id: str
) -> HTMLResponse:
    return _detail(request, queue_admin.get_message(session, queue_id=queue_id))


@router.get("/queue/{queue_id}/delete")
def queue_delete_form(
    request: Request, session: SessionDep, auth: AdminDep, queue_id: str
) -> HTMLResponse:
    message = queue_admin.get_message(session, queue_id=queue_id)
    return render(request, "queue/delete.html", {"message": message})


@router.post("/queue/{queue_id}/delete")
def queue_delete(
    session: SessionDep, settings: SettingsDep, auth: AdminDep, data: FormDep, queue_id: str
) -> Response:
    spool_id = queue_admin.delete_message(session, actor=auth.actor, queue_id=queue_id)
    session.commit()
    # The file only after the rows are gone for good; if removing fails, the orphan cleaner
    # of the delivery agent removes it later.
    SpoolStore(settings.spool_root).remove(spool_id)
    return redirect("/queue?done=deleted")


# After the delete routes: "/queue/{id}/delete" must not be taken for an action.
@router.post("/queue/{queue_id}/{action}", response_model=None)
def queue_action(
    request: Request,
    session: SessionDep,
    auth: AdminDep,
    data: FormDep,
    queue_id: str,
    action: str,
) -> Response:
    """Retry, hold or release; a message with nothing to act on is answered 409 on its page."""
    if action not in ACTIONS:
        raise PortalError(404, "Not found", "There is no page at this address.")
    try:
        if action == "retry":
            message = queue_admin.retry_message(
                session, actor=auth.actor, queue_id=queue_id, now=utcnow()
            )
        elif action == "hold":
            message = queue_admin.hold_message(session, actor=auth.actor, queue_id=queue_id)
        else:
            message = queue_admin.release_message(
                session, actor=auth.actor, queue_id=queue_id, now=utcnow()
            )
    except ConflictError as exc:
        session.rollback()
        current = queue_admin.get_message(session, queue_id=queue_id)
        return _detail(request, current, error=exc.message, status=409)
    session.commit()
    return redirect(f"/queue/{message.queue_id}?done=queue_{action}")
