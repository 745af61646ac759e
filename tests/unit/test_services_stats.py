"""Daily counters: upserts that add up, per metric and per UTC day, across sessions."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.errors import ValidationError
from app.services import stats


def test_bump_and_get(session: Session) -> None:
    day = dt.date(2026, 3, 1)
    assert stats.get(session, metric="deliveries", day=day) == 0
    stats.bump(session, metric="deliveries", day=day)
    stats.bump(session, metric="deliveries", by=4, day=day)
    stats.bump(session, metric="pop3_logins", day=day)
    stats.bump(session, metric="deliveries", day=day + dt.timedelta(days=1))
    assert stats.get(session, metric="deliveries", day=day) == 5
    assert stats.get(session, metric="pop3_logins", day=day) == 1
    assert stats.get(session, metric="deliveries", day=day + dt.timedelta(days=1)) == 1
    stats.bump(session, metric="deliveries")
    assert stats.get(session, metric="deliveries") == 1
    with pytest.raises(ValidationError):
        stats.bump(session, metric="no spaces allowed")


def test_concurrent_bumps_lose_nothing(session_factory: sessionmaker[Session]) -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(10):
                with transaction(session_factory) as s:
                    stats.bump(s, metric="deliveries")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    with session_factory() as s:
        assert stats.get(s, metric="deliveries") == 40
