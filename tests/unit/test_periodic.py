"""The periodic jobs (app/periodic.py): queue samples (one per slot whoever takes it), the
daily storage snapshot (once a day, missed days left missing), pruning with the retention."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MailboxRef, MaildirStore
from app.models import CustomerStorageDaily, Domain, QueueSample
from app.periodic import PeriodicJobs
from app.services import charts, queue
from tests.factories import seed_mailbox

START = dt.datetime(2026, 12, 1, 10, 2, 30, tzinfo=dt.UTC)


class Clock:
    def __init__(self, moment: dt.datetime) -> None:
        self.moment = moment

    def __call__(self) -> dt.datetime:
        return self.moment


def _enqueue(factory: sessionmaker[Session], *, now: dt.datetime, rcpts: list[str]) -> None:
    with transaction(factory) as session:
        queue.enqueue(
            session,
            spool_id=secrets.token_hex(16),
            size=10,
            sender="a@hosted.example",
            recipients=rcpts,
            origin="submission",
            now=now,
        )


def _samples(factory: sessionmaker[Session]) -> list[tuple[dt.datetime, int, float]]:
    with factory() as session:
        return [
            (s.sampled_at, s.queued, s.oldest_age_seconds)
            for s in session.scalars(select(QueueSample).order_by(QueueSample.sampled_at))
        ]


def test_queue_samples_one_row_per_slot_even_with_two_samplers_and_a_history_by_hour(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    settings = settings.model_copy(update={"queue_sample_seconds": 300.0})
    clock = Clock(START)
    one = PeriodicJobs(settings, session_factory, store, clock=clock)
    two = PeriodicJobs(settings, session_factory, store, clock=clock)  # another host
    _enqueue(session_factory, now=START - dt.timedelta(minutes=10), rcpts=["r1@remote.example"])

    assert one.sample_queue(clock()) is True
    assert two.sample_queue(clock()) is False  # same slot: already taken
    slot = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)
    assert _samples(session_factory) == [(slot, 1, 600.0)]

    clock.moment = START + dt.timedelta(minutes=2)  # still the same slot: not due
    assert one.sample_queue(clock()) is False
    _enqueue(session_factory, now=clock(), rcpts=["r2@remote.example", "r3@remote.example"])
    clock.moment = START + dt.timedelta(minutes=4)  # next slot (10:05)
    assert one.sample_queue(clock()) is True
    assert [s[1] for s in _samples(session_factory)] == [1, 3]

    clock.moment = START + dt.timedelta(hours=2)  # 12:02: the 11:00 hour had no sampler
    assert two.sample_queue(clock()) is True
    with session_factory() as session:
        hours = charts.queue_history(session, hours=48, now=clock())
    assert len(hours) == 48 and hours[-1].hour == dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)
    ten, eleven, twelve = hours[-3], hours[-2], hours[-1]
    assert (ten.samples, ten.queued, ten.deferred, ten.held) == (2, 3, 0, 0)
    assert ten.oldest_age_seconds == 600.0 + 240.0
    assert (eleven.samples, eleven.queued, eleven.oldest_age_seconds) == (0, None, None)
    assert twelve.samples == 1 and twelve.queued == 3


def test_pruning_removes_queue_samples_past_the_tracking_retention(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    settings = settings.model_copy(update={"tracking_retention_days": 2})
    clock = Clock(START)
    jobs = PeriodicJobs(settings, session_factory, store, clock=clock)
    jobs.sample_queue(clock())
    clock.moment = START + dt.timedelta(days=2, hours=1)
    jobs.sample_queue(clock())
    assert len(_samples(session_factory)) == 2
    assert jobs.prune(clock()) == 1
    assert [s[0].date() for s in _samples(session_factory)] == [clock().date()]
    assert jobs.prune(clock()) == 0  # not due again before the prune interval


def test_daily_storage_snapshot_once_a_day_and_missed_days_stay_missing(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    seed_mailbox(session_factory, "big@hosted.example")
    ref = MailboxRef("hosted.example", "big")
    store.deliver([(ref, [b"x" * 100])])
    with session_factory() as session:
        customer_id = session.scalar(select(Domain.customer_id))
    clock = Clock(START)
    jobs = PeriodicJobs(settings, session_factory, store, clock=clock)

    def snapshots() -> list[tuple[dt.date, int]]:
        with session_factory() as session:
            return [
                (row.day, row.bytes)
                for row in session.scalars(
                    select(CustomerStorageDaily).order_by(CustomerStorageDaily.day)
                )
            ]

    jobs.tick()
    assert snapshots() == [(START.date(), 100)]
    store.deliver([(ref, [b"y" * 50])])
    clock.moment = START + dt.timedelta(hours=5)
    assert jobs.storage_snapshot(clock()) is False  # once a day: not scanned again
    # A fresh process the same day (a restart) finds the day done in the database.
    restarted = PeriodicJobs(settings, session_factory, store, clock=clock)
    assert restarted.storage_snapshot(clock()) is False
    assert snapshots() == [(START.date(), 100)]

    # Nothing ran on Dec 2 and 3; Dec 4 gets its own snapshot, the gap stays a gap.
    clock.moment = START + dt.timedelta(days=3)
    assert restarted.storage_snapshot(clock()) is True
    assert snapshots() == [(START.date(), 100), (dt.date(2026, 12, 4), 150)]
    with session_factory() as session:
        months = charts.customer_history(session, customer_id=customer_id, now=clock())
        count = session.scalar(select(func.count()).select_from(CustomerStorageDaily))
    assert count == 2
    assert (months[-1].month, months[-1].storage_bytes, months[-1].storage_day) == (
        "2026-12",
        150,
        dt.date(2026, 12, 4),
    )
    assert (months[-2].storage_bytes, months[-2].storage_day) == (None, None)  # November


def test_a_platform_without_mailboxes_writes_no_snapshot_and_a_failing_job_spares_the_others(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    clock = Clock(START)
    jobs = PeriodicJobs(settings, session_factory, store, clock=clock)
    assert jobs.storage_snapshot(clock()) is False
    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(CustomerStorageDaily)) == 0

    def broken(now: dt.datetime) -> bool:
        raise RuntimeError("scan failed")

    jobs.storage_snapshot = broken  # type: ignore[method-assign]
    jobs.tick()  # logged, and the queue is still sampled
    assert len(_samples(session_factory)) == 1


def test_of_n_web_workers_only_worker_0_runs_the_periodic_jobs(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailhost import serve

    seen: list[bool] = []

    async def fake_run_services(settings_: Settings, kinds: Any, **kw: Any) -> int:
        seen.append(kw["periodic"])
        return 0

    monkeypatch.setattr(serve, "run_services", fake_run_services)
    for slot in (0, 1, 2):
        with pytest.raises(SystemExit):
            serve._worker_main(settings, "web", None, slot)
    assert seen == [True, False, False]
