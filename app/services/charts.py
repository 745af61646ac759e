"""The figures behind the portal's charts: hourly traffic, storage per customer (daily
snapshots) and a customer's mailboxes and storage per month, the numbers billing uses."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.hourly import METRICS, hour_of
from app.models import CustomerStorageDaily, HourlyStat, utcnow
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


@dataclass(frozen=True, slots=True)
class StorageFigure:
    bytes: int
    messages: int
    mailboxes: int


def record_storage_snapshot(
    session: Session, *, day: dt.date, per_customer: Mapping[int, StorageFigure]
) -> None:
    """Today's storage per customer (the last scan of the day wins)."""
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


@dataclass(frozen=True, slots=True)
class MonthRow:
    month: str  # "2026-11"
    mailboxes: int  # at the month's end (or now, for the running month), as billed
    peak_mailboxes: int
    storage_bytes: int | None  # the month's last daily snapshot; None before the first


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
        storage = session.scalar(
            select(CustomerStorageDaily.bytes)
            .where(
                CustomerStorageDaily.customer_id == customer_id,
                CustomerStorageDaily.day >= start,
                CustomerStorageDaily.day < end,
            )
            .order_by(CustomerStorageDaily.day.desc())
            .limit(1)
        )
        rows.append(
            MonthRow(
                month=f"{start.year:04d}-{start.month:02d}",
                mailboxes=(usage.mailboxes_active_end + usage.mailboxes_suspended_end)
                if usage
                else 0,
                peak_mailboxes=usage.peak_mailboxes if usage else 0,
                storage_bytes=int(storage) if storage is not None else None,
            )
        )
    return rows
