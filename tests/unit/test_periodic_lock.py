"""One runner of the periodic jobs per database (app/periodic_lock.py): of two candidates only
the holder of the lock ticks, the other takes over when it is released, and on PostgreSQL a
holder whose session the server ended gives the jobs up."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import make_engine
from app.maildir import MaildirStore
from app.models import QueueSample
from app.periodic import PeriodicJobs
from app.periodic_lock import PeriodicLock
from tests.conftest import require_postgres

NOON = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def _samples(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(QueueSample)) or 0)


def test_of_two_candidates_only_the_lock_holder_ticks_and_the_other_takes_over(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    one_lock, two_lock = PeriodicLock(settings), PeriodicLock(settings)
    moment = [NOON]
    one = PeriodicJobs(settings, session_factory, store, clock=lambda: moment[0], lock=one_lock)
    two = PeriodicJobs(settings, session_factory, store, clock=lambda: moment[0], lock=two_lock)
    try:
        assert one.tick() is True
        assert _samples(session_factory) == 1
        moment[0] = NOON + dt.timedelta(hours=1)  # a new slot, and not the first tick of two
        assert two.tick() is False  # one holds the lock: two writes nothing
        assert _samples(session_factory) == 1
        assert one_lock.held and not two_lock.held
        assert one.tick() is True and _samples(session_factory) == 2
        one_lock.release()  # one stops (or dies): two runs them from its next tick
        moment[0] = NOON + dt.timedelta(hours=2)
        assert two.tick() is True and _samples(session_factory) == 3
        assert one.tick() is False and not one_lock.held
    finally:
        one_lock.release()
        two_lock.release()


@pytest.mark.postgres
def test_a_holder_whose_session_the_server_ended_gives_the_jobs_up(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    admin = make_engine(settings)
    require_postgres(admin)
    one, two = PeriodicLock(settings), PeriodicLock(settings)
    try:
        assert one.acquire() is True and two.acquire() is False
        with admin.connect() as conn:  # an operator, or a failover, ends one's session
            ended = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
                )
            ).all()
            conn.commit()
        assert [row[0] for row in ended] == [True]
        assert two.acquire() is True  # the lock went with the session
        assert one.acquire() is False and not one.held  # one notices and stops running
    finally:
        one.release()
        two.release()
        admin.dispose()
