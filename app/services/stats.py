"""Daily counters (deliveries, POP3 logins) written by the edges, read by the dashboard."""

from __future__ import annotations

import datetime as dt

from sqlalchemy.orm import Session


def bump(session: Session, *, metric: str, by: int = 1, day: dt.date | None = None) -> None:
    """Add ``by`` to today's (UTC) counter ``metric`` ('deliveries', 'pop3_logins'), as an
    upsert that is safe with concurrent writers on SQLite and PostgreSQL."""
    raise NotImplementedError


def get(session: Session, *, metric: str, day: dt.date | None = None) -> int:
    raise NotImplementedError
