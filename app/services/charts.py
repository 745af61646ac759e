"""The figures behind the portal's charts: hourly traffic, the outbound queue's history
(periodic samples), storage per customer (daily snapshots) and a customer's mailboxes and
storage per month, the numbers billing uses."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import delete, exists, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.hourly import METRICS, hour_of
from app.models import CustomerStorageDaily, HourlyStat, QueueSample, utcnow
from app.services import billing


@dataclass(frozen=True, slots=True)
class HourRow:
    hour: dt.datetime
    received: int
    refused: int
    retrieved: int


def hourly_traffic(
    session: Session, *, hours: int = 48, now: dt.datetime | None = None
) -> list[HourRow]:
    """One row per UTC hour, oldest first, ending with the current hour (zeros included)."""
    last = hour_of(now or utcnow())
    first = last - dt.timedelta(hours=hours - 1)
    found: dict[tuple[dt.datetime, str], int] = {}
    for hour, metric, value in session.execute(
        select(HourlyStat.hour, HourlyStat.metric, HourlyStat.value).where(
            HourlyStat.hour >= first, HourlyStat.hour <= last
        )
    ):
        found[(hour.astimezone(dt.UTC), metric)] = int(value)
    rows = []
    for i in range(hours):
        hour = first + dt.timedelta(hours=i)
        values = [found.get((hour, metric), 0) for metric in METRICS]
        rows.append(HourRow(hour, *values))
    return rows


def sample_slot(moment: dt.datetime, seconds: float) -> dt.datetime:
    """The start of the sampling slot ``moment`` falls in (slots of ``seconds`` from the
    epoch, UTC): every process sampling in one slot names the same row."""
    stamp = moment.timestamp()
    return dt.datetime.fromtimestamp(stamp - stamp % seconds, dt.UTC)


def record_queue_sample(
    session: Session,
    *,
    slot: dt.datetime,
    depth: Mapping[str, int],
    oldest_age_seconds: float,
) -> bool:
    """Store the queue figures of ``slot``; False (and nothing written) when that slot has a
    sample already (another worker or host took it first)."""
    values = {
        "sampled_at": slot,
        "queued": int(depth.get("queued", 0)),
        "deferred": int(depth.get("deferred", 0)),
        "held": int(depth.get("held", 0)),
        "oldest_age_seconds": float(oldest_age_seconds),
    }
    keys = [QueueSample.sampled_at]
    # RETURNING says whether the row went in (rowcount is not reliable for ON CONFLICT DO
    # NOTHING with every driver: psycopg reported 1 for a skipped row).
    if session.get_bind().dialect.name == "postgresql":
        pg = (
            postgresql.insert(QueueSample)
            .values(values)
            .on_conflict_do_nothing(index_elements=keys)
        )
        result = session.execute(pg.returning(QueueSample.sampled_at))
    else:
        lite = sqlite.insert(QueueSample).values(values).on_conflict_do_nothing(index_elements=keys)
        result = session.execute(lite.returning(QueueSample.sampled_at))
    return result.first() is not None


def prune_queue_samples(session: Session, *, older_than: dt.datetime) -> int:
    """Delete samples older than ``older_than`` (a few hundred rows a day: one statement)."""
    result = session.execute(delete(QueueSample).where(QueueSample.sampled_at < older_than))
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass(frozen=True, slots=True)
class QueueHour:
    """The highest figures the samples of one UTC hour saw; ``samples`` 0: none was taken
    (nothing ran the periodic jobs then), the figures are then None, not zero."""

    hour: dt.datetime
    samples: int
    queued: int | None
    deferred: int | None
    held: int | None
    oldest_age_seconds: float | None


def queue_history(
    session: Session, *, hours: int = 48, now: dt.datetime | None = None
) -> list[QueueHour]:
    """One row per UTC hour, oldest first, ending with the current hour."""
    last = hour_of(now or utcnow())
    first = last - dt.timedelta(hours=hours - 1)
    found: dict[dt.datetime, list[QueueSample]] = {}
    for sample in session.scalars(
        select(QueueSample).where(
            QueueSample.sampled_at >= first,
            QueueSample.sampled_at < last + dt.timedelta(hours=1),
        )
    ):
        found.setdefault(hour_of(sample.sampled_at), []).append(sample)
    rows = []
    for i in range(hours):
        hour = first + dt.timedelta(hours=i)
        samples = found.get(hour, [])
        if not samples:
            rows.append(QueueHour(hour, 0, None, None, None, None))
            continue
        rows.append(
            QueueHour(
                hour,
                len(samples),
                max(s.queued for s in samples),
                max(s.deferred for s in samples),
                max(s.held for s in samples),
                max(s.oldest_age_seconds for s in samples),
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class StorageFigure:
    bytes: int
    messages: int
    mailboxes: int


def record_storage_snapshot(
    session: Session, *, day: dt.date, per_customer: Mapping[int, StorageFigure]
) -> None:
    """The storage per customer of ``day`` (the last scan of the day wins)."""
    for customer_id, figure in per_customer.items():
        values = {
            "day": day,
            "customer_id": customer_id,
            "bytes": figure.bytes,
            "messages": figure.messages,
            "mailboxes": figure.mailboxes,
        }
        update = {"bytes": figure.bytes, "messages": figure.messages, "mailboxes": figure.mailboxes}
        keys = [CustomerStorageDaily.day, CustomerStorageDaily.customer_id]
        if session.get_bind().dialect.name == "postgresql":
            pg = postgresql.insert(CustomerStorageDaily).values(values)
            session.execute(pg.on_conflict_do_update(index_elements=keys, set_=update))
        else:
            lite = sqlite.insert(CustomerStorageDaily).values(values)
            session.execute(lite.on_conflict_do_update(index_elements=keys, set_=update))


def has_storage_snapshot(session: Session, *, day: dt.date) -> bool:
    """Whether a scan already wrote the snapshot of ``day``."""
    return bool(session.scalar(select(exists().where(CustomerStorageDaily.day == day))))


@dataclass(frozen=True, slots=True)
class MonthRow:
    month: str  # "2026-11"
    mailboxes: int  # at the month's end (or now, for the running month), as billed
    peak_mailboxes: int
    storage_bytes: int | None  # the month's last daily snapshot; None: the month has none
    storage_day: dt.date | None = None  # the day of that snapshot (days without one are gaps)


def _month_start(day: dt.date, back: int) -> dt.date:
    index = day.year * 12 + day.month - 1 - back
    return dt.date(index // 12, index % 12 + 1, 1)


def customer_history(
    session: Session, *, customer_id: int, months: int = 12, now: dt.datetime | None = None
) -> list[MonthRow]:
    """The last ``months`` calendar months, oldest first, the running one included."""
    moment = now or utcnow()
    today = moment.date()
    rows = []
    for back in range(months - 1, -1, -1):
        start = _month_start(today, back)
        end = _month_start(today, back - 1)
        report = billing.usage_report(
            session, start=start, end=end, customer_id=customer_id, now=moment
        )
        usage = next((c for c in report.customers if c.customer_id == customer_id), None)
        snapshot = session.execute(
            select(CustomerStorageDaily.bytes, CustomerStorageDaily.day)
            .where(
                CustomerStorageDaily.customer_id == customer_id,
                CustomerStorageDaily.day >= start,
                CustomerStorageDaily.day < end,
            )
            .order_by(CustomerStorageDaily.day.desc())
            .limit(1)
        ).first()
        rows.append(
            MonthRow(
                month=f"{start.year:04d}-{start.month:02d}",
                mailboxes=(usage.mailboxes_active_end + usage.mailboxes_suspended_end)
                if usage
                else 0,
                peak_mailboxes=usage.peak_mailboxes if usage else 0,
                storage_bytes=int(snapshot[0]) if snapshot is not None else None,
                storage_day=snapshot[1] if snapshot is not None else None,
            )
        )
    return rows
