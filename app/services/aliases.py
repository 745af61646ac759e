"""Aliases: one address delivering to one or more addresses."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from app.models import Alias
from app.services.audit import Actor


def create_alias(session: Session, *, actor: Actor, address: str, targets: Sequence[str]) -> Alias:
    """Domain must be hosted; address must not be a mailbox or alias already (ConflictError);
    at least one target; each target a valid address of a hosted domain that exists (mailbox
    or alias); duplicates removed."""
    raise NotImplementedError


def get_alias(session: Session, *, alias_id: int) -> Alias:
    raise NotImplementedError


def get_alias_by_address(session: Session, *, address: str) -> Alias:
    raise NotImplementedError


def list_aliases(
    session: Session,
    *,
    domain_id: int | None = None,
    customer_id: int | None = None,
    search: str | None = None,
    after_id: int | None = None,
    limit: int = 50,
) -> list[Alias]:
    raise NotImplementedError


def set_alias_targets(
    session: Session, *, actor: Actor, alias_id: int, targets: Sequence[str]
) -> Alias:
    raise NotImplementedError


def delete_alias(session: Session, *, actor: Actor, alias_id: int) -> None:
    raise NotImplementedError
