"""Hosted domains, their limits, catch-all and alias domains."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from sqlalchemy import ColumnElement, delete, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session, joinedload

from app.errors import ConflictError, LimitExceededError, NotFoundError, ValidationError
from app.models import DOMAIN_RELAY, Alias, AliasTarget, Customer, Domain, DomainAlias, Mailbox
from app.services import relay_queue
from app.services.addresses import normalise_domain, split_address
from app.services.audit import Actor, audit, record_lifecycle
from app.services.common import check_status, flush_or_conflict
from app.services.tenancy import check_visible, isp_only, staff_only

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


def _customer(session: Session, customer_id: int) -> Customer:
    # Not customers.get_customer: that module imports this one (deleting a customer cascades
    # into its domains), and the dependency points one way.
    customer = session.get(Customer, customer_id)
    if customer is None:
        raise NotFoundError(f"no customer with id {customer_id}", field="customer_id")
    return customer


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
    staff_only(actor, "create domains")
    customer = _customer(session, customer_id)
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


def require_hosted(domain: Domain, *, what: str) -> None:
    """ConflictError for a relay domain: it has no mailboxes, aliases, catch-all or alias
    domains (all its mail goes to its next hop; app/services/relay.py)."""
    if domain.kind == DOMAIN_RELAY:
        raise ConflictError(
            f"{domain.name} is a relay domain: it has no {what} (its mail goes to the next hop)",
            field="domain",
        )


def get_domain(session: Session, *, domain_id: int, actor: Actor | None = None) -> Domain:
    """Raises NotFoundError, also for another customer's domain (``tenancy``)."""
    domain = session.get(Domain, domain_id)
    message = f"no domain with id {domain_id}"
    if domain is None:
        raise NotFoundError(message, field="domain_id")
    check_visible(actor, domain.customer_id, message=message, field="domain_id")
    return domain


def get_domain_by_name(session: Session, *, name: str, actor: Actor | None = None) -> Domain:
    """Accepts Unicode or IDNA, any case. Raises NotFoundError (or ValidationError), also for
    another customer's domain (``tenancy``)."""
    domain_name = normalise_domain(name)
    domain = session.scalar(select(Domain).where(Domain.name == domain_name))
    message = f"domain {domain_name} is not hosted here"
    if domain is None:
        raise NotFoundError(message, field="domain")
    check_visible(actor, domain.customer_id, message=message, field="domain")
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
    staff_only(actor, "change domains")
    domain = get_domain(session, domain_id=domain_id, actor=actor)
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
    staff_only(actor, "change domains")
    domain = get_domain(session, domain_id=domain_id, actor=actor)
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


def customer_of_address(session: Session, address: str, *, lock: bool = False) -> int | None:
    """The id of the customer owning the mailbox or alias at the normalised ``address``, or None.

    ``user@alias-domain`` is the user of the alias domain's target domain, so it belongs to
    that domain's customer. ``lock`` takes a shared row lock (PostgreSQL; SQLite serialises
    writers anyway) on the mailbox or alias row, and on the alias domain row, until commit: a
    concurrent deletion waits for this transaction, so its cleanup (``forget_addresses``) sees
    the reference being added instead of leaving it dangling."""
    local, domain_name = address.rsplit("@", 1)
    row = session.execute(
        select(Domain.id, Domain.customer_id).where(Domain.name == domain_name)
    ).first()
    if row is None:
        via_alias = (
            select(Domain.id, Domain.customer_id)
            .join(DomainAlias, DomainAlias.target_domain_id == Domain.id)
            .where(DomainAlias.name == domain_name)
        )
        if lock:
            via_alias = via_alias.with_for_update(read=True, of=DomainAlias)
        row = session.execute(via_alias).first()
    if row is None:
        return None
    domain_id, customer_id = row
    for model in (Mailbox, Alias):
        query = select(model.id).where(model.domain_id == domain_id, model.local_part == local)
        if session.scalar(query.with_for_update(read=True) if lock else query):
            return int(customer_id)
    return None


def check_own_address(
    session: Session, *, customer_id: int, address: str, field: str, label: str
) -> str:
    """Normalise ``address`` and require it to be a mailbox or alias of a domain (or alias
    domain) of customer ``customer_id``: where an alias or catch-all delivers is that customer's
    business only, so one customer's addresses can never be made to receive another's mail."""
    local, domain_name = split_address(address, field=field)
    normalised = f"{local}@{domain_name}"
    if customer_of_address(session, normalised, lock=True) != customer_id:
        # One message for an unknown address, a domain not hosted and another customer's
        # address: the refusal must not tell who hosts what.
        raise ValidationError(
            f"{label} {normalised} is not a mailbox or alias of this customer's domains",
            field=field,
        )
    return normalised


def set_catchall(session: Session, *, actor: Actor, domain_id: int, target: str | None) -> Domain:
    """``target`` is a full address that must be a mailbox or alias of a domain of the same
    customer (ValidationError, field 'target', otherwise); None or blank clears."""
    staff_only(actor, "change domains")
    domain = get_domain(session, domain_id=domain_id, actor=actor)
    normalised: str | None = None
    if target is not None and target.strip():
        require_hosted(domain, what="catch-all")
        normalised = check_own_address(
            session,
            customer_id=domain.customer_id,
            address=target,
            field="target",
            label="catch-all target",
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


# Addresses per IN list when forgetting references (well below SQLite's bound-parameter limit).
_IN_CHUNK = 500


def _references(
    column: InstrumentedAttribute[str] | InstrumentedAttribute[str | None],
    addresses: set[str],
    domain_names: set[str],
) -> list[ColumnElement[bool]]:
    """Conditions matching ``column`` to one of ``addresses`` or to any address of one of
    ``domain_names``; one element per statement to run (each stays a bounded size)."""
    ordered = sorted(addresses)
    conditions: list[ColumnElement[bool]] = [
        column.in_(ordered[i : i + _IN_CHUNK]) for i in range(0, len(ordered), _IN_CHUNK)
    ]
    if domain_names:
        # Stored addresses are normalised local@idna-domain and domain names hold no LIKE
        # wildcards ('%', '_'), but escape anyway so the match stays exact.
        conditions.append(
            or_(
                *(
                    column.like("%@" + _escape_like(name), escape="\\")
                    for name in sorted(domain_names)
                )
            )
        )
    return conditions


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def address_forms(session: Session, *, domain: Domain, local_part: str) -> set[str]:
    """Every address naming ``local_part`` of ``domain``: its own and one per alias domain."""
    names = [domain.name, *(alias.name for alias in domain.domain_aliases)]
    return {f"{local_part}@{name}" for name in names}


def forget_addresses(
    session: Session,
    *,
    actor: Actor,
    reason: str,
    addresses: Iterable[str] = (),
    domain_names: Iterable[str] = (),
) -> None:
    """Remove every reference to addresses that just stopped existing, so that whoever creates
    one of them again later (perhaps another customer, after a domain is re-registered) does
    not silently start receiving mail meant for the old owner.

    ``addresses`` are normalised addresses, ``domain_names`` domain or alias-domain names all of
    whose addresses went. Alias targets naming them are removed ('alias.target_removed'),
    catch-alls naming them cleared ('domain.catchall_cleared'), and an alias left without
    targets is deleted ('alias.deleted', 'last target deleted'), which in turn forgets its own
    addresses; a visited set ends alias rings. Call after deleting the rows themselves."""
    pending = set(addresses)
    pending_domains = set(domain_names)
    seen: set[str] = set()
    while pending or pending_domains:
        seen |= pending
        for condition in _references(Domain.catchall_target, pending, pending_domains):
            for domain in session.scalars(select(Domain).where(condition).order_by(Domain.id)):
                audit(
                    session,
                    actor=actor,
                    action="domain.catchall_cleared",
                    object_type="domain",
                    object_id=domain.id,
                    object_name=domain.name,
                    detail=f"{domain.catchall_target}: {reason}",
                )
                domain.catchall_target = None
        emptied: dict[int, Alias] = {}
        for condition in _references(AliasTarget.address, pending, pending_domains):
            gone = session.scalars(
                select(AliasTarget)
                .where(condition)
                .options(joinedload(AliasTarget.alias).joinedload(Alias.domain))
                .order_by(AliasTarget.alias_id, AliasTarget.address)
            ).all()
            for target in gone:
                alias = target.alias
                audit(
                    session,
                    actor=actor,
                    action="alias.target_removed",
                    object_type="alias",
                    object_id=alias.id,
                    object_name=alias.address,
                    detail=f"{target.address}: {reason}",
                )
                alias.targets.remove(target)  # delete-orphan deletes the row
                if not alias.targets:
                    emptied[alias.id] = alias
        pending = set()
        pending_domains = set()
        for alias in emptied.values():
            audit(
                session,
                actor=actor,
                action="alias.deleted",
                object_type="alias",
                object_id=alias.id,
                object_name=alias.address,
                detail="last target deleted",
            )
            pending |= address_forms(session, domain=alias.domain, local_part=alias.local_part)
            session.delete(alias)
        pending -= seen
        reason = "alias deleted (last target deleted)"
        session.flush()


def add_domain_alias(
    session: Session, *, actor: Actor, domain_id: int, alias_name: str
) -> DomainAlias:
    staff_only(actor, "change domains")
    domain = get_domain(session, domain_id=domain_id, actor=actor)
    require_hosted(domain, what="alias domains")
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


@isp_only("change domains")
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
    # user@alias-domain no longer names anyone; if the name is hosted again later (by any
    # customer), old targets must not deliver there.
    forget_addresses(session, actor=actor, reason="alias domain removed", domain_names=[alias.name])


def delete_domain(session: Session, *, actor: Actor, domain_id: int, cascade: bool = False) -> None:
    """Refused while it has mailboxes or aliases unless ``cascade``; records 'deleted' events
    for each mailbox and for the domain. Alias targets and catch-alls of other domains that
    point into this domain or its alias domains are removed (see ``forget_addresses``).
    Message files are removed by the edge afterwards."""
    staff_only(actor, "change domains")
    domain = get_domain(session, domain_id=domain_id, actor=actor)
    if domain.kind == DOMAIN_RELAY:
        relay_queue.check_deletable(session, domain=domain)
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
    if domain.kind == DOMAIN_RELAY:
        record_lifecycle(
            session,
            entity="relay_domain",
            entity_id=domain.id,
            action="deleted",
            customer_id=domain.customer_id,
            domain_name=domain.name,
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
    # Every address of the domain and of its alias domains stops existing with it.
    names = {domain.name, *(alias.name for alias in domain.domain_aliases)}
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
    forget_addresses(session, actor=actor, reason="domain deleted", domain_names=names)
    session.expire_all()
