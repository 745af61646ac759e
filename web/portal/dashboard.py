"""The dashboard: platform counts, storage totals, today's traffic and the latest audit."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import STATUS_ACTIVE, STATUS_SUSPENDED, AuditEntry, Customer, Domain, Mailbox
from app.services import scan_log, stats
from web.deps import SessionDep
from web.portal import relay as relay_portal
from web.portal.auth import AuthDep, FormDep
from web.portal.charts_pages import dashboard_charts
from web.portal.render import render
from web.portal.usage import UsageCache

router = APIRouter()


def _by_status(
    session: Session, model: type[Customer] | type[Domain] | type[Mailbox]
) -> dict[str, int]:
    rows = session.execute(select(model.status, func.count()).group_by(model.status))
    counts = {STATUS_ACTIVE: 0, STATUS_SUSPENDED: 0}
    counts.update({status: n for status, n in rows})
    return counts


@router.get("/")
def dashboard(request: Request, session: SessionDep, auth: AuthDep) -> HTMLResponse:
    cache: UsageCache = request.app.state.usage_cache
    totals = cache.get(session)
    latest = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(10)).all()
    return render(
        request,
        "dashboard/index.html",
        {
            "customers": _by_status(session, Customer),
            "domains": _by_status(session, Domain),
            "mailboxes": _by_status(session, Mailbox),
            "totals": totals,
            "totals_at": (
                dt.datetime.fromtimestamp(totals.computed_at, dt.UTC) if totals else None
            ),
            "deliveries": stats.get(session, metric="deliveries"),
            "pop3_logins": stats.get(session, metric="pop3_logins"),
            "latest": latest,
            "relay_queues": relay_portal.dashboard_rows(session),
            "scan_days": scan_log.daily_counts(session),
            **dashboard_charts(session, totals),
        },
    )


@router.post("/dashboard/refresh-usage")
def refresh_usage(request: Request, auth: AuthDep, form: FormDep) -> RedirectResponse:
    """Recompute storage totals now (an operator who just cleaned up wants to see it)."""
    cache: UsageCache = request.app.state.usage_cache
    cache.refresh_now()
    return RedirectResponse("/", status_code=303)
