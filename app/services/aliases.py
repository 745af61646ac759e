"""Aliases: one address delivering to one or more addresses."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload, selectinload

from app.errors import ConflictError, NotFoundError, ValidationError
from app.models import Alias, AliasTarget, Domain, Mailbox
from app.services.addresses import split_address
from app.services.audit import Actor, audit
from app.services.common import flush_or_conflict
from app.services.domains import (
    address_forms,
    check_own_address,
    forget_addresses,
    get_domain_by_name,
    require_hosted,
)
from app.services.tenancy import check_visible

# An alias is a small distribution list, not a mailing-list manager.
MAX_TARGETS = 1000


def _clean_targets(
    session: Session, targets: Sequence[str], *, own: str, customer_id: int
) -> list[str]:
    """Normalised, de-duplicated targets, each a mailbox or alias of a domain (or alias domain)
    of the alias's own customer; see ``check_own_address``."""
    if isinstance(targets, str):
        targets = [targets]
    cleaned: list[str] = []
    for raw in targets:
        local, domain_name = split_address(raw, field="targets")
        address = f"{local}@{domain_name}"
        if address == own:
            raise ValidationError(f"alias {own} cannot deliver to itself", field="targets")
        if address in cleaned:
            continue
        check_own_address(
            session, customer_id=customer_id, address=address, field="targets", label="target"
        )
        cleaned.append(address)
    if not cleaned:
        raise ValidationError("an alias needs at least one target", field="targets")
    if len(cleaned) > MAX_TARGETS:
        raise ValidationError(f"an alias may have at most {MAX_TARGETS} targets", field="targets")
    return cleaned


def create_alias(session: Session, *, actor: Actor, address: str, targets: Sequence[str]) -> Alias:
    """Domain must be hosted; address must not be a mailbox or alias already (ConflictError);
    at least one target; each target an existing mailbox or alias of a domain (or alias domain)
    of the same customer as the alias's domain (ValidationError, field 'targets', with the same
    message for another customer's address as for an unknown one); duplicates removed."""
    local, domain_name = split_address(address)
    normalised = f"{local}@{domain_name}"
    domain = get_domain_by_name(session, name=domain_name, actor=actor)
    require_hosted(domain, what="aliases")
    if session.scalar(
        select(Mailbox.id).where(Mailbox.domain_id == domain.id, Mailbox.local_part == local)
    ):
        raise ConflictError(f"{normalised} is already a mailbox", field="address")
    if session.scalar(
        select(Alias.id).where(Alias.domain_id == domain.id, Alias.local_part == local)
    ):
        raise ConflictError(f"alias {normalised} already exists", field="address")
    cleaned = _clean_targets(session, targets, own=normalised, customer_id=domain.customer_id)
    alias = Alias(
        domain=domain,
        local_part=local,
        # Sorted as the relationship loads them, so the object reads the same before a reload.
        targets=[AliasTarget(address=target) for target in sorted(cleaned)],
    )
    session.add(alias)
    flush_or_conflict(session, f"alias {normalised} already exists", field="address")
    audit(
        session,
        actor=actor,
        action="alias.create",
        object_type="alias",
        object_id=alias.id,
        object_name=normalised,
        detail="-> " + ", ".join(cleaned),
    )
    return alias


def get_alias(session: Session, *, alias_id: int, actor: Actor | None = None) -> Alias:
    """Raises NotFoundError, also for another customer's alias (``tenancy``)."""
    alias = session.get(Alias, alias_id)
    message = f"no alias with id {alias_id}"
    if alias is None:
        raise NotFoundError(message, field="alias_id")
    check_visible(actor, alias.domain.customer_id, message=message, field="alias_id")
    return alias


def get_alias_by_address(session: Session, *, address: str) -> Alias:
    local, domain_name = split_address(address)
    alias = session.scalar(
        select(Alias)
        .join(Domain, Alias.domain_id == Domain.id)
        .where(Domain.name == domain_name, Alias.local_part == local)
        .options(joinedload(Alias.domain), selectinload(Alias.targets))
    )
    if alias is None:
        raise NotFoundError(f"no alias {local}@{domain_name}", field="address")
    return alias


def list_aliases(
    session: Session,
    *,
    domain_id: int | None = None,
    customer_id: int | None = None,
    search: str | None = None,
    after_id: int | None = None,
    limit: int = 50,
) -> list[Alias]:
    query = (
        select(Alias)
        .join(Domain, Alias.domain_id == Domain.id)
        .options(joinedload(Alias.domain), selectinload(Alias.targets))
        .order_by(Alias.id)
    )
    if domain_id is not None:
        query = query.where(Alias.domain_id == domain_id)
    if customer_id is not None:
        query = query.where(Domain.customer_id == customer_id)
    if search:
        needle = search.strip().lower()
        escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(
            (Alias.local_part + "@" + Domain.name).like(f"%{escaped}%", escape="\\")
        )
    if after_id is not None:
        query = query.where(Alias.id > after_id)
    return list(session.scalars(query.limit(max(0, limit))).unique())


def set_alias_targets(
    session: Session, *, actor: Actor, alias_id: int, targets: Sequence[str]
) -> Alias:
    """Replace the targets; the same rules as ``create_alias``."""
    alias = get_alias(session, alias_id=alias_id, actor=actor)
    cleaned = _clean_targets(
        session, targets, own=alias.address, customer_id=alias.domain.customer_id
    )
    before = [t.address for t in alias.targets]
    if sorted(before) == sorted(cleaned):
        return alias
    keep = set(cleaned)
    alias.targets = [t for t in alias.targets if t.address in keep]
    # Flush the removals first so re-adding cannot trip the (alias_id, address) unique key.
    session.flush()
    existing = {t.address for t in alias.targets}
    for address in cleaned:
        if address not in existing:
            alias.targets.append(AliasTarget(address=address))
    session.flush()
    session.expire(alias, ["targets"])  # reload in the relationship's order
    audit(
        session,
        actor=actor,
        action="alias.update",
        object_type="alias",
        object_id=alias.id,
        object_name=alias.address,
        detail="-> " + ", ".join(cleaned),
    )
    return alias


def delete_alias(session: Session, *, actor: Actor, alias_id: int) -> None:
    """Delete the alias and every reference to its addresses (targets of other aliases,
    catch-alls; see ``forget_addresses``)."""
    alias = get_alias(session, alias_id=alias_id, actor=actor)
    audit(
        session,
        actor=actor,
        action="alias.delete",
        object_type="alias",
        object_id=alias.id,
        object_name=alias.address,
    )
    forms = address_forms(session, domain=alias.domain, local_part=alias.local_part)
    session.delete(alias)
    session.flush()
    forget_addresses(session, actor=actor, reason="alias deleted", addresses=forms)
