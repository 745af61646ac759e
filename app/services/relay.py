"""Relay domains (the "SMTP mail connection"): create or convert, settings,
flush / hold / release, delete with or without the queued mail, and the queue per domain. The
listed recipients are in app/services/relay_recipients.py.

A relay domain is a ``Domain`` of kind 'relay' with one ``RelayDomain`` row of settings. The
MX accepts its mail per ``recipient_mode`` and stores it in the outbound queue; the delivery
agent sends it to ``next_hop``. Every function is keyword-only over a Session and does not
commit; errors are those of app/errors.py (ValidationError, NotFoundError, ConflictError).
Lifecycle events: 'relay_domain' created (created or converted) and deleted, next to the
'domain' events every domain has (billing of relay domains reads the 'relay_domain' ones).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import ConflictError, NotFoundError, ValidationError
from app.models import (
    DOMAIN_RELAY,
    RELAY_DEFAULT_CALLOUT_CACHE,
    RELAY_DEFAULT_MAX_AGE,
    RELAY_MODES,
    RELAY_TLS_OPPORTUNISTIC,
    RELAY_TLS_POLICIES,
    STATUS_ACTIVE,
    Alias,
    Customer,
    Domain,
    Mailbox,
    RelayDomain,
)
from app.services import relay_queue
from app.services.audit import SYSTEM_ACTOR, Actor, audit, record_lifecycle
from app.services.domains import create_domain, delete_domain, get_domain, get_domain_by_name
from app.services.relay_hop import HopCheck, parse_next_hop
from app.services.relay_queue import RelayQueueSummary
from app.services.tenancy import isp_only

# A week of callout caching at most: a customer's user list changes.
MAX_CALLOUT_CACHE = 7 * 86400
# A year of queueing at most (the column is seconds in a 32-bit integer anyway).
MAX_QUEUE_AGE = 365 * 86400
MAX_FLUSH_NETWORKS = 50


@dataclass(frozen=True, slots=True)
class RelayInfo:
    """A relay domain as the edges need it (detached from the session)."""

    domain_id: int
    name: str
    customer_id: int
    active: bool  # the domain and its customer are active
    next_hop: str
    tls_policy: str
    max_queue_age: int
    held: bool
    hold_reason: str | None
    recipient_mode: str
    callout_cache_seconds: int
    flush_networks: tuple[str, ...]

    def may_flush(self, client_address: str) -> bool:
        """Is ``client_address`` in one of the networks allowed to ETRN this domain?"""
        try:
            address = ipaddress.ip_address(client_address)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in ipaddress.ip_network(n, strict=False) for n in self.flush_networks)


def _check_choice(value: str, choices: Sequence[str], field: str) -> str:
    clean = value.strip().lower()
    if clean not in choices:
        raise ValidationError(f"{field} must be one of {', '.join(choices)}", field=field)
    return clean


def _check_seconds(value: int, *, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValidationError(
            f"{field} must be a whole number of seconds, {low}-{high}", field=field
        )
    return value


def normalise_networks(networks: Iterable[str], *, field: str = "flush_networks") -> str:
    """Space-separated canonical networks (``192.0.2.7`` becomes ``192.0.2.7/32``)."""
    found: list[str] = []
    for raw in networks:
        for part in raw.replace(",", " ").split():
            try:
                net = str(ipaddress.ip_network(part, strict=False))
            except ValueError as exc:
                raise ValidationError(f"invalid network {part!r}", field=field) from exc
            if net not in found:
                found.append(net)
    if len(found) > MAX_FLUSH_NETWORKS:
        raise ValidationError(f"at most {MAX_FLUSH_NETWORKS} networks", field=field)
    return " ".join(found)


def _clean_hop(next_hop: str, hop_check: HopCheck | None) -> str:
    hop = parse_next_hop(next_hop)
    if hop_check is not None:
        hop_check(hop)
    return str(hop)


def _settings_row(
    *,
    next_hop: str,
    tls_policy: str,
    max_queue_age: int,
    recipient_mode: str,
    callout_cache_seconds: int,
    flush_networks: Iterable[str],
    hop_check: HopCheck | None,
) -> RelayDomain:
    """A validated settings row (not yet added): every check before anything is written."""
    return RelayDomain(
        next_hop=_clean_hop(next_hop, hop_check),
        tls_policy=_check_choice(tls_policy, RELAY_TLS_POLICIES, "tls_policy"),
        max_queue_age=_check_seconds(
            max_queue_age, field="max_queue_age", low=60, high=MAX_QUEUE_AGE
        ),
        held=False,
        recipient_mode=_check_choice(recipient_mode, RELAY_MODES, "recipient_mode"),
        callout_cache_seconds=_check_seconds(
            callout_cache_seconds, field="callout_cache_seconds", low=0, high=MAX_CALLOUT_CACHE
        ),
        flush_networks=normalise_networks(flush_networks),
    )


def _became_relay(session: Session, *, actor: Actor, domain: Domain, action: str) -> None:
    relay = domain.relay
    assert relay is not None
    audit(
        session,
        actor=actor,
        action=action,
        object_type="domain",
        object_id=domain.id,
        object_name=domain.name,
        detail=f"next hop {relay.next_hop}, recipients {relay.recipient_mode}",
    )
    record_lifecycle(
        session,
        entity="relay_domain",
        entity_id=domain.id,
        action="created",
        customer_id=domain.customer_id,
        domain_name=domain.name,
    )


@isp_only("manage relay domains")
def create_relay_domain(
    session: Session,
    *,
    actor: Actor,
    customer_id: int,
    name: str,
    next_hop: str,
    tls_policy: str = RELAY_TLS_OPPORTUNISTIC,
    max_queue_age: int = RELAY_DEFAULT_MAX_AGE,
    recipient_mode: str = "list",
    callout_cache_seconds: int = RELAY_DEFAULT_CALLOUT_CACHE,
    flush_networks: Iterable[str] = (),
    hop_check: HopCheck | None = None,
) -> Domain:
    """A new domain of kind 'relay'. ``hop_check`` (``relay_hop.hop_checker(settings)``)
    refuses a next hop that is this platform. Records 'domain' and 'relay_domain' created."""
    # Validate the settings before the domain exists, so nothing is half-written.
    row = _settings_row(
        next_hop=next_hop,
        tls_policy=tls_policy,
        max_queue_age=max_queue_age,
        recipient_mode=recipient_mode,
        callout_cache_seconds=callout_cache_seconds,
        flush_networks=flush_networks,
        hop_check=hop_check,
    )
    domain = create_domain(session, actor=actor, customer_id=customer_id, name=name)
    domain.kind = DOMAIN_RELAY
    domain.relay = row
    session.flush()
    _became_relay(session, actor=actor, domain=domain, action="relay.create")
    return domain


@isp_only("manage relay domains")
def convert_to_relay(
    session: Session,
    *,
    actor: Actor,
    domain_id: int,
    next_hop: str,
    tls_policy: str = RELAY_TLS_OPPORTUNISTIC,
    max_queue_age: int = RELAY_DEFAULT_MAX_AGE,
    recipient_mode: str = "list",
    callout_cache_seconds: int = RELAY_DEFAULT_CALLOUT_CACHE,
    flush_networks: Iterable[str] = (),
    hop_check: HopCheck | None = None,
) -> Domain:
    """Turn a hosted domain without mailboxes or aliases into a relay domain (ConflictError
    if it has any, or is a relay domain already)."""
    domain = get_domain(session, domain_id=domain_id)
    if domain.kind == DOMAIN_RELAY:
        raise ConflictError(f"{domain.name} is already a relay domain", field="domain_id")
    mailboxes = session.scalar(select(func.count(Mailbox.id)).where(Mailbox.domain_id == domain.id))
    aliases = session.scalar(select(func.count(Alias.id)).where(Alias.domain_id == domain.id))
    alias_domains = len(domain.domain_aliases)
    if mailboxes or aliases or domain.catchall_target or alias_domains:
        raise ConflictError(
            f"{domain.name} still has {mailboxes} mailbox(es), {aliases} alias(es), "
            f"{alias_domains} alias domain(s)"
            f"{' and a catch-all' if domain.catchall_target else ''}; remove them first",
            field="domain_id",
        )
    domain.relay = _settings_row(
        next_hop=next_hop,
        tls_policy=tls_policy,
        max_queue_age=max_queue_age,
        recipient_mode=recipient_mode,
        callout_cache_seconds=callout_cache_seconds,
        flush_networks=flush_networks,
        hop_check=hop_check,
    )
    domain.kind = DOMAIN_RELAY
    session.flush()
    _became_relay(session, actor=actor, domain=domain, action="relay.convert")
    return domain


def get_relay(session: Session, *, domain_id: int, actor: Actor | None = None) -> RelayDomain:
    """The relay settings of a domain; NotFoundError if it is not a relay domain (or, for a
    customer's ``actor``, another customer's: ``tenancy``)."""
    domain = get_domain(session, domain_id=domain_id, actor=actor)
    if domain.kind != DOMAIN_RELAY or domain.relay is None:
        raise NotFoundError(f"{domain.name} is not a relay domain", field="domain_id")
    return domain.relay


def get_relay_by_name(session: Session, *, name: str) -> RelayDomain:
    domain = get_domain_by_name(session, name=name)
    return get_relay(session, domain_id=domain.id)


def list_relay_domains(
    session: Session,
    *,
    customer_id: int | None = None,
    after_id: int | None = None,
    limit: int = 50,
) -> list[Domain]:
    query = select(Domain).where(Domain.kind == DOMAIN_RELAY).order_by(Domain.id)
    if customer_id is not None:
        query = query.where(Domain.customer_id == customer_id)
    if after_id is not None:
        query = query.where(Domain.id > after_id)
    return list(session.scalars(query.limit(max(0, limit))))


def relay_info(session: Session, *, domain_name: str) -> RelayInfo | None:
    """The relay domain named ``domain_name`` (IDNA, lower case), or None if it is not one."""
    row = session.execute(
        select(RelayDomain, Domain.name, Domain.customer_id, Domain.status, Customer.status)
        .join(Domain, RelayDomain.domain_id == Domain.id)
        .join(Customer, Domain.customer_id == Customer.id)
        .where(Domain.name == domain_name, Domain.kind == DOMAIN_RELAY)
    ).first()
    if row is None:
        return None
    relay, name, customer_id, domain_status, customer_status = row
    return RelayInfo(
        domain_id=relay.domain_id,
        name=name,
        customer_id=customer_id,
        active=domain_status == STATUS_ACTIVE and customer_status == STATUS_ACTIVE,
        next_hop=relay.next_hop,
        tls_policy=relay.tls_policy,
        max_queue_age=relay.max_queue_age,
        held=relay.held,
        hold_reason=relay.hold_reason,
        recipient_mode=relay.recipient_mode,
        callout_cache_seconds=relay.callout_cache_seconds,
        flush_networks=tuple(relay.flush_network_list),
    )


@isp_only("manage relay domains")
def update_relay(
    session: Session,
    *,
    actor: Actor,
    domain_id: int,
    next_hop: str | None = None,
    tls_policy: str | None = None,
    max_queue_age: int | None = None,
    recipient_mode: str | None = None,
    callout_cache_seconds: int | None = None,
    flush_networks: Iterable[str] | None = None,
    hop_check: HopCheck | None = None,
) -> RelayDomain:
    """Change the given settings (None = unchanged; ``flush_networks=[]`` clears). Audited."""
    relay = get_relay(session, domain_id=domain_id)
    changes: list[str] = []
    updates: dict[str, object] = {}
    if next_hop is not None:
        updates["next_hop"] = _clean_hop(next_hop, hop_check)
    if tls_policy is not None:
        updates["tls_policy"] = _check_choice(tls_policy, RELAY_TLS_POLICIES, "tls_policy")
    if max_queue_age is not None:
        updates["max_queue_age"] = _check_seconds(
            max_queue_age, field="max_queue_age", low=60, high=MAX_QUEUE_AGE
        )
    if recipient_mode is not None:
        updates["recipient_mode"] = _check_choice(recipient_mode, RELAY_MODES, "recipient_mode")
    if callout_cache_seconds is not None:
        updates["callout_cache_seconds"] = _check_seconds(
            callout_cache_seconds, field="callout_cache_seconds", low=0, high=MAX_CALLOUT_CACHE
        )
    if flush_networks is not None:
        updates["flush_networks"] = normalise_networks(flush_networks)
    for key, value in updates.items():
        if getattr(relay, key) != value:
            changes.append(f"{key}: {getattr(relay, key)} -> {value}")
            setattr(relay, key, value)
    if changes:
        session.flush()
        audit(
            session,
            actor=actor,
            action="relay.update",
            object_type="domain",
            object_id=relay.domain_id,
            object_name=relay.domain.name,
            detail="; ".join(changes),
        )
    return relay


# --- queue: flush, hold, release, delete ----------------------------------------------------


@isp_only("manage relay domains")
def flush(session: Session, *, actor: Actor, domain_id: int, now: dt.datetime) -> int:
    """Make the domain's queued and deferred mail due now; returns how many recipients.
    A held domain stays held (release it first): ConflictError."""
    relay = get_relay(session, domain_id=domain_id)
    if relay.held:
        raise ConflictError(f"{relay.domain.name} is held; release it first", field="domain_id")
    count = relay_queue.flush_rows(session, domain_name=relay.domain.name, now=now)
    audit(
        session,
        actor=actor,
        action="relay.flush",
        object_type="domain",
        object_id=domain_id,
        object_name=relay.domain.name,
        detail=f"{count} recipient(s) made due",
    )
    return count


@isp_only("manage relay domains")
def hold(session: Session, *, actor: Actor, domain_id: int, reason: str | None = None) -> int:
    """Stop delivery to the domain (new mail is queued held too); returns rows held now."""
    relay = get_relay(session, domain_id=domain_id)
    relay.held = True
    relay.hold_reason = (reason or "").strip()[:500] or None
    session.flush()
    count = relay_queue.hold_rows(session, domain_name=relay.domain.name)
    audit(
        session,
        actor=actor,
        action="relay.hold",
        object_type="domain",
        object_id=domain_id,
        object_name=relay.domain.name,
        detail=f"{count} recipient(s) held"
        + (f"; {relay.hold_reason}" if relay.hold_reason else ""),
    )
    return count


@isp_only("manage relay domains")
def release(session: Session, *, actor: Actor, domain_id: int, now: dt.datetime) -> int:
    """Deliver again: held rows of the domain become queued and due now."""
    relay = get_relay(session, domain_id=domain_id)
    relay.held = False
    relay.hold_reason = None
    session.flush()
    count = relay_queue.release_rows(session, domain_name=relay.domain.name, now=now)
    audit(
        session,
        actor=actor,
        action="relay.release",
        object_type="domain",
        object_id=domain_id,
        object_name=relay.domain.name,
        detail=f"{count} recipient(s) released",
    )
    return count


def hold_for_loop(session: Session, *, domain_name: str, error: str) -> bool:
    """The delivery agent found a loop (the next hop greets with our name): hold the domain
    with ``error`` as the reason, audited as the system. False if it is no relay domain."""
    info = relay_info(session, domain_name=domain_name)
    if info is None:
        return False
    if not info.held:
        hold(session, actor=SYSTEM_ACTOR, domain_id=info.domain_id, reason=error)
    return True


def queue_summary(session: Session, *, domain_id: int) -> RelayQueueSummary:
    relay = get_relay(session, domain_id=domain_id)
    return relay_queue.summary(session, domain_name=relay.domain.name)


@isp_only("manage relay domains")
def delete_relay_domain(
    session: Session, *, actor: Actor, domain_id: int, discard: bool = False
) -> list[str]:
    """Delete a relay domain. Refused (ConflictError) while mail for it is queued, unless
    ``discard``: then that mail is deleted without a bounce (audited 'relay.discard').
    Returns the spool ids of discarded messages (the edge removes them after commit)."""
    relay = get_relay(session, domain_id=domain_id)
    name = relay.domain.name
    pending = relay_queue.pending_count(session, domain_name=name)
    spool_ids: list[str] = []
    if not discard:
        relay_queue.check_deletable(session, domain=relay.domain)
    elif pending:
        deleted, spool_ids = relay_queue.discard_rows(session, domain_name=name)
        audit(
            session,
            actor=actor,
            action="relay.discard",
            object_type="domain",
            object_id=domain_id,
            object_name=name,
            detail=f"{deleted} queued recipient(s) discarded without a bounce",
        )
    delete_domain(session, actor=actor, domain_id=domain_id)
    return spool_ids
