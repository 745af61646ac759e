"""Daily counters (deliveries, POP3 logins) written by the edges, read by the dashboard."""

from __future__ import annotations

import datetime as dt
import re

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.errors import ValidationError
from app.models import DailyStat

_METRIC = re.compile(r"^[a-z0-9_:.-]{1,32}$")


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _check_metric(metric: str) -> str:
    if not _METRIC.match(metric):
        raise ValidationError(f"invalid metric name {metric!r}", field="metric")
    return metric


def bump(session: Session, *, metric: str, by: int = 1, day: dt.date | None = None) -> None:
    """Add ``by`` to today's (UTC) counter ``metric`` ('deliveries', 'pop3_logins'), as an
    upsert that is safe with concurrent writers on SQLite and PostgreSQL."""
    _check_metric(metric)
    values = {"day": day or _today(), "metric": metric, "value": by}
    # INSERT ... ON CONFLICT DO UPDATE is atomic on both backends: two processes bumping the
    # same counter never lose an increment and never fail on the primary key.
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        pg_stmt = postgresql.insert(DailyStat).values(values)
        session.execute(
            pg_stmt.on_conflict_do_update(
                index_elements=[DailyStat.day, DailyStat.metric],
                set_={"value": DailyStat.value + pg_stmt.excluded.value},
            )
        )
    elif dialect == "sqlite":
        lite_stmt = sqlite.insert(DailyStat).values(values)
        session.execute(
            lite_stmt.on_conflict_do_update(
                index_elements=[DailyStat.day, DailyStat.metric],
                set_={"value": DailyStat.value + lite_stmt.excluded.value},
            )
        )
    else:  # pragma: no cover - normalise_database_url only admits the two above
        raise ValidationError(f"unsupported database {dialect!r}", field="database_url")


def get(session: Session, *, metric: str, day: dt.date | None = None) -> int:
    value = session.scalar(
        select(DailyStat.value).where(
            DailyStat.day == (day or _today()), DailyStat.metric == _check_metric(metric)
        )
    )
    return int(value or 0)
