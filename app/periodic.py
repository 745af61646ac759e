"""The platform's periodic jobs: queue samples, the daily storage snapshot, pruning.

Theory of operation. The candidates are the portal's process (``mailhost serve``, worker 0
of ``mailhost web --workers N``) and every delivery agent (``mailhost deliver``, the agent
of ``serve``), so a deployment of split services without the portal still samples its
queue. Each candidate runs ``start()``: a task that calls ``tick()`` off the event loop
every ``TICK_SECONDS`` (or every queue sampling interval, if shorter). A tick first asks
the lock (app/periodic_lock.py): one candidate per database holds it and runs the jobs, the
others do nothing until the holder stops or dies. Each tick runs what is due:

* every ``MAILHOST_QUEUE_SAMPLE_SECONDS``: the outbound queue's depth by state and its oldest
  message's age into ``queue_samples``, keyed by the sampling slot's start, so a second host
  sampling the same slot writes nothing (INSERT ... ON CONFLICT DO NOTHING);
* once a UTC day: the storage scan (app/storage_usage.py) into ``customer_storage_daily``,
  unless that day already has a snapshot (the dashboard's scan writes one too). A day on which
  nothing ran stays without a snapshot: usage of the past cannot be measured later, so none is
  invented (the customer chart shows the month's latest real snapshot and its date);
* every ``MAILHOST_TRACKING_PRUNE_INTERVAL_SECONDS``: message events and queue samples past
  ``MAILHOST_TRACKING_RETENTION_DAYS``.

A job that fails is logged and tried again at its next turn; it never stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.orm import Session, sessionmaker

from app import metrics
from app.config import Settings
from app.db import transaction
from app.maildir import MaildirStore
from app.models import utcnow
from app.periodic_lock import PeriodicLock
from app.services import charts
from app.storage_usage import compute_totals
from app.tracking import prune, retention_cutoff

log = logging.getLogger("mailhost.periodic")

# How often the runner looks for due jobs (a job's own interval decides when it runs).
TICK_SECONDS = 30.0


class PeriodicJobs:
    """The due-time bookkeeping of the periodic jobs; ``tick`` is blocking (call off-loop)."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        store: MaildirStore,
        *,
        clock: Callable[[], dt.datetime] = utcnow,
        lock: PeriodicLock | None = None,
    ) -> None:
        self.settings = settings
        self._factory = session_factory
        self._store = store
        self._clock = clock
        self._lock = lock  # None: run at every tick (a test, or `mailhost` by hand)
        self._next_sample: dt.datetime | None = None
        self._next_prune: dt.datetime | None = None
        self._snapshot_day: dt.date | None = None  # the last day known to have a snapshot

    def tick(self) -> bool:
        """Run what is due, if this process holds the lock; whether it did."""
        try:
            if self._lock is not None and not self._lock.acquire():
                return False
        except Exception:
            log.exception("periodic jobs: the lock could not be checked")
            return False
        now = self._clock()
        for name, job in (
            ("sampling the outbound queue", self.sample_queue),
            ("the daily storage snapshot", self.storage_snapshot),
            ("pruning past the retention", self.prune),
        ):
            try:
                job(now)
            except Exception:
                log.exception("periodic job failed: %s", name)
        return True

    def sample_queue(self, now: dt.datetime) -> bool:
        """Sample the queue when a new slot began; True when this call wrote the sample."""
        if self._next_sample is not None and now < self._next_sample:
            return False
        seconds = self.settings.queue_sample_seconds
        slot = charts.sample_slot(now, seconds)
        with transaction(self._factory) as session:
            figures = metrics.queue_figures(session, now=now)
            written = charts.record_queue_sample(
                session,
                slot=slot,
                depth=figures.depth,
                oldest_age_seconds=figures.oldest_age_seconds,
            )
        self._next_sample = slot + dt.timedelta(seconds=seconds)
        return written

    def storage_snapshot(self, now: dt.datetime) -> bool:
        """Write today's storage snapshot unless it exists; True when this call wrote it."""
        day = now.astimezone(dt.UTC).date()
        if self._snapshot_day == day:
            return False
        with self._factory() as session:
            if charts.has_storage_snapshot(session, day=day):
                self._snapshot_day = day
                return False
        totals = compute_totals(self._factory, self._store, now=now)
        # compute_totals logs a failed write rather than raising: look whether it landed.
        # A platform without mailboxes writes no row, and is scanned (cheaply) again.
        with self._factory() as session:
            written = charts.has_storage_snapshot(session, day=day)
        if written:
            self._snapshot_day = day
            log.info(
                "storage snapshot of %s: %d customer(s), %d mailbox(es)",
                day,
                len(totals.per_customer),
                totals.mailboxes,
            )
        return written

    def prune(self, now: dt.datetime) -> int:
        """Events and queue samples past the retention; how many rows went."""
        if self._next_prune is not None and now < self._next_prune:
            return 0
        self._next_prune = now + dt.timedelta(seconds=self.settings.tracking_prune_interval_seconds)
        cutoff = retention_cutoff(self.settings, now=now)
        removed = prune(self._factory, older_than=cutoff)
        with transaction(self._factory) as session:
            removed += charts.prune_queue_samples(session, older_than=cutoff)
        if removed:
            log.info("pruned %d message event(s) and queue sample(s) past the retention", removed)
        return removed


def start(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> Callable[[], Awaitable[None]]:
    """Be a candidate for the periodic jobs in this process (a task on the running loop,
    each tick off the loop); returns the stopper, which gives the lock up."""
    lock = PeriodicLock(settings)
    jobs = PeriodicJobs(settings, session_factory, store, lock=lock)

    async def loop_forever() -> None:
        while True:
            await asyncio.to_thread(jobs.tick)  # logs its own failures
            await asyncio.sleep(min(TICK_SECONDS, settings.queue_sample_seconds))

    task = asyncio.create_task(loop_forever(), name="periodic-jobs")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.to_thread(lock.release)

    return stop
