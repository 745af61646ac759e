"""Actors, the audit log and the append-only lifecycle event feed."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.models import AuditEntry, LifecycleEvent, utcnow

# Arbitrary constant key for the PostgreSQL advisory lock that serialises event writers.
_EVENT_LOCK_KEY = 0x6D61696C  # "mail"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is acting: kind is 'operator', 'token', 'cli', 'system' or 'customer_admin'.

    ``customer_id`` is set for a customer's own administrator: every lookup by id then sees
    only that customer's objects (app/services/tenancy.py)."""

    kind: str
    name: str
    remote_addr: str | None = None
    customer_id: int | None = None


CLI_ACTOR = Actor("cli", "cli")
SYSTEM_ACTOR = Actor("system", "system")


def audit(
    session: Session,
    *,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: int | str | None = None,
    object_name: str | None = None,
    detail: str | None = None,
) -> None:
    """Append one audit entry (never contains passwords or tokens). A customer
    administrator's entries carry their customer: their own audit view shows those only."""
    session.add(
        AuditEntry(
            actor_type=actor.kind,
            actor=actor.name,
            action=action,
            object_type=object_type,
            object_id=None if object_id is None else str(object_id),
            object_name=object_name,
            detail=detail,
            remote_addr=actor.remote_addr,
            customer_id=actor.customer_id,
        )
    )


def record_lifecycle(
    session: Session,
    *,
    entity: str,
    entity_id: int,
    action: str,
    customer_id: int,
    domain_name: str,
    address: str | None = None,
) -> LifecycleEvent:
    """Append a lifecycle event, with ids handed out in commit order.

    A billing client syncs with ``after=<last id>``; that is only safe if no transaction can
    commit a smaller id after a larger one became visible. On PostgreSQL every writer of events
    therefore takes one transaction-scoped advisory lock before inserting, which serialises
    them until commit; SQLite serialises all writers anyway.
    """
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _EVENT_LOCK_KEY})
    event = LifecycleEvent(
        occurred_at=utcnow(),
        entity=entity,
        entity_id=entity_id,
        action=action,
        customer_id=customer_id,
        domain_name=domain_name,
        address=address,
    )
    session.add(event)
    session.flush()
    return event
