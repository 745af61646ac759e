"""Hourly traffic counters for the dashboard charts: counted in memory, upserted in batches.

The edges call ``add("received" | "refused" | "retrieved", n)`` on their hot path: that only
adds to a dictionary under a lock. ``flush`` (run every few seconds by the service entry, off
the event loop, and once more at shutdown) writes the pending counts as one upsert per hour
and metric. Why not per message: one database write per message would serialise deliveries
on SQLite's single writer for a chart; why not from tracking events: grouping millions of
rows by hour at page view is far too slow. A process killed with SIGKILL loses at most one
interval of counts (the chart is a picture, billing does not use it).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.models import HourlyStat

log = logging.getLogger("mailhost.hourly")

METRICS = ("received", "refused", "retrieved")
FLUSH_INTERVAL = 5.0

_lock = threading.Lock()
_pending: Counter[tuple[dt.datetime, str]] = Counter()


def hour_of(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)


def add(metric: str, by: int = 1, *, now: dt.datetime | None = None) -> None:
    """Count ``by`` for ``metric`` in the current UTC hour (memory only; see ``flush``)."""
    if metric not in METRICS:
        raise ValueError(f"unknown hourly metric {metric!r}")
    key = (hour_of(now or dt.datetime.now(dt.UTC)), metric)
    with _lock:
        _pending[key] += by


def _take() -> Counter[tuple[dt.datetime, str]]:
    global _pending
    with _lock:
        taken, _pending = _pending, Counter()
    return taken


def _give_back(counts: Counter[tuple[dt.datetime, str]]) -> None:
    with _lock:
        _pending.update(counts)


def upsert(session: Session, *, hour: dt.datetime, metric: str, by: int) -> None:
    """Add ``by`` to the row of ``hour`` and ``metric`` (atomic on SQLite and PostgreSQL)."""
    values = {"hour": hour, "metric": metric, "value": by}
    if session.get_bind().dialect.name == "postgresql":
        pg = postgresql.insert(HourlyStat).values(values)
        session.execute(
            pg.on_conflict_do_update(
                index_elements=[HourlyStat.hour, HourlyStat.metric],
                set_={"value": HourlyStat.value + pg.excluded.value},
            )
        )
    else:
        lite = sqlite.insert(HourlyStat).values(values)
        session.execute(
            lite.on_conflict_do_update(
                index_elements=[HourlyStat.hour, HourlyStat.metric],
                set_={"value": HourlyStat.value + lite.excluded.value},
            )
        )


def flush(factory: sessionmaker[Session]) -> int:
    """Write every pending count in one transaction; on failure they stay pending."""
    counts = _take()
    if not counts:
        return 0
    try:
        with transaction(factory) as session:
            for (hour, metric), by in sorted(counts.items()):
                upsert(session, hour=hour, metric=metric, by=by)
    except Exception:
        _give_back(counts)
        log.warning("could not write the hourly counters; will retry", exc_info=True)
        return 0
    return sum(counts.values())
