"""Small checks every provisioning service shares: status values and unique-key races."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.errors import ConflictError, ValidationError
from app.models import STATUSES


def check_status(status: str) -> str:
    if status not in STATUSES:
        raise ValidationError(
            f"status must be one of {', '.join(STATUSES)}, not {status!r}", field="status"
        )
    return status


def flush_or_conflict(session: Session, message: str, *, field: str) -> None:
    """Flush; a unique-key violation (a concurrent insert that won the race after our check)
    becomes the same ConflictError the check would have raised. The session must then be
    rolled back, which the edge's transaction does."""
    try:
        session.flush()
    except IntegrityError as exc:
        raise ConflictError(message, field=field) from exc
