"""Operator login sessions of the portal: opened at login, ended everywhere on demand.

The cookie holds 32 random bytes; the database stores only their SHA-256
(``WebSession.id_hash``), so a leaked table cannot be replayed. The portal owns the cookie;
these functions own the rows, so every door ends sessions the same way (a new password ends
them all, whichever door set it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from sqlalchemy import delete
from sqlalchemy.orm import Session

from app.models import WebSession, utcnow


def hash_session_id(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def open_session(
    session: Session, *, operator_id: int, remote_addr: str | None, max_age: int
) -> str:
    """A new login session (fresh id and CSRF token); the cookie value. Expired rows go."""
    now = utcnow()
    session.execute(delete(WebSession).where(WebSession.expires_at < now))
    raw = secrets.token_urlsafe(32)
    session.add(
        WebSession(
            id_hash=hash_session_id(raw),
            operator_id=operator_id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + dt.timedelta(seconds=max_age),
            remote_addr=remote_addr,
        )
    )
    session.flush()
    return raw


def end_sessions(session: Session, *, operator_id: int) -> int:
    """Log the operator out everywhere (every browser, every machine); how many ended."""
    result = session.execute(
        delete(WebSession).where(WebSession.operator_id == operator_id),
        execution_options={"synchronize_session": "fetch"},
    )
    return int(getattr(result, "rowcount", 0) or 0)
