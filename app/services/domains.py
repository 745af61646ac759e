"""Hosted domains, their limits, catch-all and alias domains."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.models import Domain, DomainAlias
from app.services.audit import Actor


def create_domain(
    session: Session,
    *,
    actor: Actor,
    customer_id: int,
    name: str,
    max_mailboxes: int | None = None,
    default_quota_bytes: int | None = None,
    total_quota_bytes: int | None = None,
) -> Domain:
    """Name normalised to IDNA; unique across domains AND alias domains (ConflictError).
    Records a 'created' lifecycle event."""
    raise NotImplementedError


def get_domain(session: Session, *, domain_id: int) -> Domain:
    raise NotImplementedError


def get_domain_by_name(session: Session, *, name: str) -> Domain:
    """Accepts Unicode or IDNA, any case. Raises NotFoundError (or ValidationError)."""
    raise NotImplementedError


def list_domains(
    session: Session,
    *,
    customer_id: int | None = None,
    search: str | None = None,
    status: str | None = None,
    after_id: int | None = None,
    limit: int = 50,
) -> list[Domain]:
    raise NotImplementedError


def update_domain(
    session: Session,
    *,
    actor: Actor,
    domain_id: int,
    max_mailboxes: int | None = None,
    default_quota_bytes: int | None = None,
    total_quota_bytes: int | None = None,
    clear_max_mailboxes: bool = False,
    clear_total_quota: bool = False,
) -> Domain:
    """Limits may not be set below current use (LimitExceededError)."""
    raise NotImplementedError


def set_domain_status(session: Session, *, actor: Actor, domain_id: int, status: str) -> Domain:
    """Records 'suspended' / 'resumed' lifecycle events (no event if unchanged)."""
    raise NotImplementedError


def set_catchall(session: Session, *, actor: Actor, domain_id: int, target: str | None) -> Domain:
    """``target`` is a full address that must resolve to a local mailbox or alias; None clears."""
    raise NotImplementedError


def add_domain_alias(
    session: Session, *, actor: Actor, domain_id: int, alias_name: str
) -> DomainAlias:
    raise NotImplementedError


def remove_domain_alias(session: Session, *, actor: Actor, alias_name: str) -> None:
    raise NotImplementedError


def delete_domain(session: Session, *, actor: Actor, domain_id: int, cascade: bool = False) -> None:
    """Refused while it has mailboxes or aliases unless ``cascade``; records 'deleted' events
    for each mailbox and for the domain. Message files are removed by the edge afterwards."""
    raise NotImplementedError
