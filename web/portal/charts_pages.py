"""The dashboard's and a customer page's charts: their figures, SVG and CSV downloads.

Every chart is drawn on the server (web/charts.py) and printed next to a table of the same
numbers, with a CSV link: readable without JavaScript, without images, in a screen reader.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import metrics
from app.csvsafe import safe_row
from app.models import Customer
from app.services import charts as chart_data
from app.services import customers
from web.charts import Series, bar_chart, ranking_chart
from web.deps import SessionDep
from web.params import Id
from web.portal.auth import AuthDep
from web.portal.usage import StorageTotals, UsageCache

router = APIRouter()

MIB = 1024 * 1024


def _csv(name: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Response:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:
        writer.writerow(safe_row(row))
    return Response(
        out.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


def _storage_rows(session: Session, totals: StorageTotals | None) -> list[tuple[int, str, int]]:
    """(customer id, name, bytes), largest first."""
    if totals is None:
        return []
    names = dict(session.execute(select(Customer.id, Customer.name)).all())
    rows = [
        (cid, names.get(cid, f"customer {cid}"), figure.bytes)
        for cid, figure in totals.per_customer.items()
    ]
    return sorted(rows, key=lambda r: (-r[2], r[1]))


def dashboard_charts(session: Session, totals: StorageTotals | None) -> dict[str, Any]:
    """The dashboard's chart context: traffic per hour (48 h), storage per customer, the
    queue now and its history per hour (48 h, from the periodic samples)."""
    traffic = chart_data.hourly_traffic(session, hours=48)
    labels = [row.hour.strftime("%H:00") for row in traffic]
    traffic_svg = bar_chart(
        title="Messages received, refused and retrieved per hour, last 48 hours (UTC)",
        labels=labels,
        series=[
            Series("received", [r.received for r in traffic]),
            Series("refused", [r.refused for r in traffic]),
            Series("retrieved (POP3)", [r.retrieved for r in traffic]),
        ],
        label_every=6,
    )
    storage = _storage_rows(session, totals)[:20]
    storage_svg = ranking_chart(
        title="Storage per customer (MiB)",
        labels=[name for _, name, _ in storage],
        values=[round(b / MIB, 2) for _, _, b in storage],
        unit=" MiB",
    )
    queue = metrics.queue_figures(session)
    queue_history = chart_data.queue_history(session, hours=48)
    queue_svg = bar_chart(
        title="Outbound queue: recipients still to deliver, highest sample per hour, "
        "last 48 hours (UTC)",
        labels=[row.hour.strftime("%H:00") for row in queue_history],
        series=[
            Series("queued", [r.queued or 0 for r in queue_history]),
            Series("deferred", [r.deferred or 0 for r in queue_history]),
            Series("held", [r.held or 0 for r in queue_history]),
        ],
        label_every=6,
    )
    return {
        "traffic": traffic,
        "traffic_svg": traffic_svg,
        "storage_rows": storage,
        "storage_svg": storage_svg,
        "queue": queue,
        "queue_history": queue_history,
        "queue_svg": queue_svg,
        "near_quota": totals.near_quota if totals else (),
    }


def customer_charts(session: Session, *, customer_id: int) -> dict[str, Any]:
    """A customer page's chart context: mailboxes and storage over the last 12 months."""
    history = chart_data.customer_history(session, customer_id=customer_id)
    labels = [row.month for row in history]
    return {
        "history": history,
        "mailboxes_svg": bar_chart(
            title="Mailboxes at each month's end (as billed), last 12 months",
            labels=labels,
            series=[
                Series("mailboxes", [r.mailboxes for r in history]),
                Series("peak", [r.peak_mailboxes for r in history]),
            ],
            label_every=2,
        ),
        "storage_svg": bar_chart(
            title="Storage at each month's last daily snapshot (MiB), last 12 months",
            labels=labels,
            series=[
                Series("MiB", [round((r.storage_bytes or 0) / MIB, 2) for r in history]),
            ],
            label_every=2,
        ),
    }


@router.get("/dashboard/traffic.csv")
def traffic_csv(session: SessionDep, auth: AuthDep) -> Response:
    rows = chart_data.hourly_traffic(session, hours=48)
    return _csv(
        "traffic.csv",
        ["hour_utc", "received", "refused", "retrieved"],
        ((r.hour.isoformat(), r.received, r.refused, r.retrieved) for r in rows),
    )


@router.get("/dashboard/storage.csv")
def storage_csv(request: Request, session: SessionDep, auth: AuthDep) -> Response:
    cache: UsageCache = request.app.state.usage_cache
    totals = cache.get(session)
    rows = _storage_rows(session, totals)
    figures = totals.per_customer if totals else {}
    return _csv(
        "storage.csv",
        ["customer_id", "customer", "bytes", "messages", "mailboxes"],
        ((cid, name, b, figures[cid].messages, figures[cid].mailboxes) for cid, name, b in rows),
    )


@router.get("/dashboard/queue.csv")
def queue_csv(session: SessionDep, auth: AuthDep) -> Response:
    """The queue's history: per UTC hour the highest sampled figures (empty cells: no
    sample was taken in that hour)."""
    rows = chart_data.queue_history(session, hours=48)

    def cell(value: float | None) -> object:
        return "" if value is None else value

    return _csv(
        "queue.csv",
        ["hour_utc", "samples", "queued", "deferred", "held", "oldest_age_seconds"],
        (
            (
                r.hour.isoformat(),
                r.samples,
                cell(r.queued),
                cell(r.deferred),
                cell(r.held),
                cell(None if r.oldest_age_seconds is None else round(r.oldest_age_seconds)),
            )
            for r in rows
        ),
    )


@router.get("/customers/{customer_id}/history.csv")
def customer_history_csv(session: SessionDep, auth: AuthDep, customer_id: Id) -> Response:
    customers.get_customer(session, customer_id=customer_id)  # 404 when unknown
    history = chart_data.customer_history(session, customer_id=customer_id)
    return _csv(
        f"customer-{customer_id}-history.csv",
        ["month", "mailboxes_at_end", "peak_mailboxes", "storage_bytes", "storage_day"],
        (
            (
                r.month,
                r.mailboxes,
                r.peak_mailboxes,
                "" if r.storage_bytes is None else r.storage_bytes,
                "" if r.storage_day is None else r.storage_day.isoformat(),
            )
            for r in history
        ),
    )
