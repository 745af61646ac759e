"""Hosted domains, their limits, catch-all and alias domains."""

from __future__ import annotations

import contextlib

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.errors import ConflictError, LimitExceededError, NotFoundError, ValidationError
from app.models import Alias, AliasTarget, Domain, DomainAlias, Mailbox
from app.services.addresses import normalise_domain, split_address
from app.services.audit import Actor, audit, record_lifecycle
from app.services.customers import check_status, flush_or_conflict, get_customer

# BigInteger columns: refuse anything a signed 64-bit integer cannot hold.
MAX_BYTES = 2**63 - 1


def _check_limit(value: int | None, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{field} must be a whole number", field=field)
    if value < 0 or value > MAX_BYTES:
        raise ValidationError(f"{field} must be between 0 and {MAX_BYTES}", field=field)
    return value


def _name_in_use(session: Session, name: str) -> str | None:
    """'domain' or 'alias domain' if ``name`` is taken by either, else None."""
    if session.scalar(select(Domain.id).where(Domain.name == name)) is not None:
        return "domain"
    if session.scalar(select(DomainAlias.id).where(DomainAlias.name == name)) is not None:
        return "alias domain"
    return None


def usage_of(session: Session, domain_id: int) -> tuple[int, int]:
    """(number of mailboxes, sum of their quotas) for a domain."""
    row = session.execute(
        select(func.count(Mailbox.id), func.coalesce(func.sum(Mailbox.quota_bytes), 0)).where(
            Mailbox.domain_id == domain_id
        )
    ).one()
    return int(row[0]), int(row[1])


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
    domain_name = normalise_domain(name, field="name")
    _check_limit(max_mailboxes, "max_mailboxes")
    _check_limit(default_quota_bytes, "default_quota_bytes")
    _check_limit(total_quota_bytes, "total_quota_bytes")
    customer = get_customer(session, customer_id=customer_id)
    taken = _name_in_use(session, domain_name)
    if taken is not None:
        raise ConflictError(f"{domain_name} is already a hosted {taken}", field="name")
    domain = Domain(
        name=domain_name,
        customer_id=customer.id,
        status="active",
        max_mailboxes=max_mailboxes,
        total_quota_bytes=total_quota_bytes,
    )
    if default_quota_bytes is not None:
        domain.default_quota_bytes = default_quota_bytes
    session.add(domain)
    flush_or_conflict(session, f"{domain_name} is already a hosted domain", field="name")
    audit(
        session,
        actor=actor,
        action="domain.create",
        object_type="domain",
        object_id=domain.id,
        object_name=domain.name,
        detail=f"customer={customer.name}",
    )
    record_lifecycle(
        session,
        entity="domain",
        entity_id=domain.id,
        action="created",
        customer_id=customer.id,
        domain_name=domain.name,
    )
    return domain


def get_domain(session: Session, *, domain_id: int) -> Domain:
    domain = session.get(Domain, domain_id)
    if domain is None:
        raise NotFoundError(f"no domain with id {domain_id}", field="domain_id")
    return domain


def get_domain_by_name(session: Session, *, name: str) -> Domain:
    """Accepts Unicode or IDNA, any case. Raises NotFoundError (or ValidationError)."""
    domain_name = normalise_domain(name)
    domain = session.scalar(select(Domain).where(Domain.name == domain_name))
    if domain is None:
        raise NotFoundError(f"domain {domain_name} is not hosted here", field="domain")
    return domain


def list_domains(
    session: Session,
    *,
    customer_id: int | None = None,
    search: str | None = None,
    status: str | None = None,
    after_id: int | None = None,
    limit: int = 50,
) -> list[Domain]:
    query = select(Domain).order_by(Domain.id)
    if customer_id is not None:
        query = query.where(Domain.customer_id == customer_id)
    if search:
        needle = search.strip().lower()
        # A Unicode search term matches the stored punycode form.
        with contextlib.suppress(ValidationError):
            needle = normalise_domain(needle) if "." in needle else needle
        escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        query = query.where(Domain.name.like(f"%{escaped}%", escape="\\"))
    if status is not None:
        query = query.where(Domain.status == check_status(status))
    if after_id is not None:
        query = query.where(Domain.id > after_id)
    return list(session.scalars(query.limit(max(0, limit))))


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
    _check_limit(max_mailboxes, "max_mailboxes")
    _check_limit(default_quota_bytes, "default_quota_bytes")
    _check_limit(total_quota_bytes, "total_quota_bytes")
    domain = get_domain(session, domain_id=domain_id)
    count, quota_sum = usage_of(session, domain.id)
    changes: list[str] = []
    if clear_max_mailboxes:
        if domain.max_mailboxes is not None:
            changes.append("max_mailboxes: unlimited")
        domain.max_mailboxes = None
    elif max_mailboxes is not None:
        if max_mailboxes < count:
            raise LimitExceededError(
                f"{domain.name} already has {count} mailboxes, more than {max_mailboxes}",
                field="max_mailboxes",
            )
        if max_mailboxes != domain.max_mailboxes:
            changes.append(f"max_mailboxes: {domain.max_mailboxes} -> {max_mailboxes}")
        domain.max_mailboxes = max_mailboxes
    if clear_total_quota:
        if domain.total_quota_bytes is not None:
            changes.append("total_quota_bytes: unlimited")
        domain.total_quota_bytes = None
    elif total_quota_bytes is not None:
        if total_quota_bytes < quota_sum:
            raise LimitExceededError(
                f"the mailboxes of {domain.name} already have {quota_sum} bytes of quota, "
                f"more than {total_quota_bytes}",
                field="total_quota_bytes",
            )
        if total_quota_bytes != domain.total_quota_bytes:
            changes.append(f"total_quota_bytes: {domain.total_quota_bytes} -> {total_quota_bytes}")
        domain.total_quota_bytes = total_quota_bytes
    if default_quota_bytes is not None and default_quota_bytes != domain.default_quota_bytes:
        changes.append(
            f"default_quota_bytes: {domain.default_quota_bytes} -> {default_quota_bytes}"
        )
        domain.default_quota_bytes = default_quota_bytes
    if changes:
        session.flush()
        audit(
            session,
            actor=actor,
            action="domain.update",
            object_type="domain",
            object_id=domain.id,
            object_name=domain.name,
            detail="; ".join(changes),
        )
    return domain


def set_domain_status(session: Session, *, actor: Actor, domain_id: int, status: str) -> Domain:
    """Records 'suspended' / 'resumed' lifecycle events (no event if unchanged)."""
    check_status(status)
    domain = get_domain(session, domain_id=domain_id)
    if domain.status == status:
        return domain
    domain.status = status
    session.flush()
    suspended = status == "suspended"
    audit(
        session,
        actor=actor,
        action="domain.suspend" if suspended else "domain.resume",
        object_type="domain",
        object_id=domain.id,
        object_name=domain.name,
    )
    record_lifecycle(
        session,
        entity="domain",
        entity_id=domain.id,
        action="suspended" if suspended else "resumed",
        customer_id=domain.customer_id,
        domain_name=domain.name,
    )
    return domain


def address_exists(session: Session, address: str) -> str | None:
    """'mailbox' or 'alias' if the normalised ``address`` is one of a hosted domain."""
    local, domain_name = split_address(address)
    domain_id = session.scalar(select(Domain.id).where(Domain.name == domain_name))
    if domain_id is None:
        return None
    if (
        session.scalar(
            select(Mailbox.id).where(Mailbox.domain_id == domain_id, Mailbox.local_part == local)
        )
        is not None
    ):
        return "mailbox"
    if (
        session.scalar(
            select(Alias.id).where(Alias.domain_id == domain_id, Alias.local_part == local)
        )
        is not None
    ):
        return "alias"
    return None


def set_catchall(session: Session, *, actor: Actor, domain_id: int, target: str | None) -> Domain:
    """``target`` is a full address that must resolve to a local mailbox or alias; None clears."""
    domain = get_domain(session, domain_id=domain_id)
    normalised: str | None = None
    if target is not None and target.strip():
        local, target_domain = split_address(target, field="target")
        normalised = f"{local}@{target_domain}"
        if address_exists(session, normalised) is None:
            raise ValidationError(
                f"catch-all target {normalised} is not a mailbox or alias hosted here",
                field="target",
            )
    if normalised != domain.catchall_target:
        domain.catchall_target = normalised
        session.flush()
        audit(
            session,
            actor=actor,
            action="domain.catchall",
            object_type="domain",
            object_id=domain.id,
            object_name=domain.name,
            detail=f"catch-all -> {normalised}" if normalised else "catch-all cleared",
        )
    return domain


def add_domain_alias(
    session: Session, *, actor: Actor, domain_id: int, alias_name: str
) -> DomainAlias:
    domain = get_domain(session, domain_id=domain_id)
    name = normalise_domain(alias_name, field="alias_name")
    taken = _name_in_use(session, name)
    if taken is not None:
        raise ConflictError(f"{name} is already a hosted {taken}", field="alias_name")
    alias = DomainAlias(name=name, target_domain_id=domain.id)
    session.add(alias)
    flush_or_conflict(session, f"{name} is already a hosted alias domain", field="alias_name")
    audit(
        session,
        actor=actor,
        action="domain_alias.create",
        object_type="domain_alias",
        object_id=alias.id,
        object_name=name,
        detail=f"-> {domain.name}",
    )
    return alias


def get_domain_alias(session: Session, *, alias_name: str) -> DomainAlias:
    name = normalise_domain(alias_name, field="alias_name")
    alias = session.scalar(select(DomainAlias).where(DomainAlias.name == name))
    if alias is None:
        raise NotFoundError(f"{name} is not an alias domain", field="alias_name")
    return alias


def remove_domain_alias(session: Session, *, actor: Actor, alias_name: str) -> None:
    alias = get_domain_alias(session, alias_name=alias_name)
    audit(
        session,
        actor=actor,
        action="domain_alias.delete",
        object_type="domain_alias",
        object_id=alias.id,
        object_name=alias.name,
        detail=f"-> {alias.target_domain.name}",
    )
    session.delete(alias)
    session.flush()


def delete_domain(session: Session, *, actor: Actor, domain_id: int, cascade: bool = False) -> None:
    """Refused while it has mailboxes or aliases unless ``cascade``; records 'deleted' events
    for each mailbox and for the domain. Message files are removed by the edge afterwards."""
    domain = get_domain(session, domain_id=domain_id)
    mailbox_rows = session.execute(
        select(Mailbox.id, Mailbox.local_part)
        .where(Mailbox.domain_id == domain.id)
        .order_by(Mailbox.id)
    ).all()
    alias_count = session.scalar(select(func.count(Alias.id)).where(Alias.domain_id == domain.id))
    if (mailbox_rows or alias_count) and not cascade:
        raise ConflictError(
            f"{domain.name} still has {len(mailbox_rows)} mailbox(es) and {alias_count} "
            "alias(es); delete them first or cascade",
            field="domain_id",
        )
    for mailbox_id, local_part in mailbox_rows:
        record_lifecycle(
            session,
            entity="mailbox",
            entity_id=mailbox_id,
            action="deleted",
            customer_id=domain.customer_id,
            domain_name=domain.name,
            address=f"{local_part}@{domain.name}",
        )
    record_lifecycle(
        session,
        entity="domain",
        entity_id=domain.id,
        action="deleted",
        customer_id=domain.customer_id,
        domain_name=domain.name,
    )
    audit(
        session,
        actor=actor,
        action="domain.delete",
        object_type="domain",
        object_id=domain.id,
        object_name=domain.name,
        detail=(
            f"cascade: {len(mailbox_rows)} mailbox(es), {alias_count} alias(es)"
            if cascade
            else None
        ),
    )
    alias_ids = select(Alias.id).where(Alias.domain_id == domain.id).scalar_subquery()
    # Bulk deletes (one statement per table, not one per row) keep a big domain's deletion
    # quick; "fetch" synchronisation removes the deleted rows from the session too.
    session.execute(
        delete(AliasTarget).where(AliasTarget.alias_id.in_(alias_ids)),
        execution_options={"synchronize_session": "fetch"},
    )
    for model in (Alias, Mailbox):
        session.execute(
            delete(model).where(model.domain_id == domain.id),
            execution_options={"synchronize_session": "fetch"},
        )
    session.execute(
        delete(DomainAlias).where(DomainAlias.target_domain_id == domain.id),
        execution_options={"synchronize_session": "fetch"},
    )
    session.execute(
        delete(Domain).where(Domain.id == domain.id),
        execution_options={"synchronize_session": "fetch"},
    )
    session.flush()
    session.expire_all()
