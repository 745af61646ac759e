"""Scanning policy per customer and per domain, and the domains' allow and block lists.

The effective policy of a domain is the platform default (Settings ``scan_*``), overridden
field by field by the customer's own row, then by the domain's own row (NULL inherits). List
entries are a sender address, a sender domain (which also covers its subdomains) or a client
network (CIDR); when an allow and a block entry both match, the block wins (an explicit deny
is never undone by a broader allow).
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from types import EllipsisType
from typing import Literal

from sqlalchemy import Connection, bindparam, delete, exists, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import ConflictError, NotFoundError, ValidationError
from app.models import (
    SCAN_LIST_ALLOW,
    SCAN_LIST_BLOCK,
    Domain,
    ScanListEntry,
    ScanPolicyOverride,
)
from app.scanning.decision import ScanPolicy
from app.services.addresses import normalise_address, normalise_domain
from app.services.audit import Actor, audit
from app.services.customers import get_customer
from app.services.domains import get_domain
from app.services.tenancy import isp_only

MAX_SUBJECT_TAG = 40
MAX_SCORE = 1000.0
# Entries per domain and list: enough for real use, small enough to load per transaction.
MAX_LIST_ENTRIES = 1000
ListName = Literal["allow", "block"]
Scope = Literal["customer", "domain"]
_FIELDS = ("reject_score", "tag_score", "subject_tag", "greylisting")


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """Fields to set on an override; ``None`` clears the field (inherit), ``...`` keeps it."""

    reject_score: float | None | EllipsisType = ...
    tag_score: float | None | EllipsisType = ...
    subject_tag: str | None | EllipsisType = ...
    greylisting: bool | None | EllipsisType = ...


def defaults_from(settings: Settings) -> ScanPolicy:
    """The platform defaults (``Settings.scan_*``)."""
    return ScanPolicy(
        reject_score=settings.scan_reject_score,
        tag_score=settings.scan_tag_score,
        subject_tag=settings.scan_subject_tag,
        greylisting=settings.scan_greylisting,
    )


def _check_score(value: object, field: str) -> None:
    if value is None or value is ...:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ValidationError(f"{field} must be a number", field=field)
    if abs(value) > MAX_SCORE:
        raise ValidationError(
            f"{field} must be between -{MAX_SCORE:g} and {MAX_SCORE:g}", field=field
        )


def _check_tag(value: object) -> None:
    if value is None or value is ...:
        return
    if (
        not isinstance(value, str)
        or len(value) > MAX_SUBJECT_TAG
        or not all(ch.isprintable() for ch in value)
    ):
        raise ValidationError(
            f"subject_tag must be printable text of at most {MAX_SUBJECT_TAG} characters",
            field="subject_tag",
        )


def _apply(policy: ScanPolicy, row: ScanPolicyOverride | None) -> ScanPolicy:
    if row is None:
        return policy
    return ScanPolicy(
        reject_score=policy.reject_score if row.reject_score is None else row.reject_score,
        tag_score=policy.tag_score if row.tag_score is None else row.tag_score,
        subject_tag=policy.subject_tag if row.subject_tag is None else row.subject_tag,
        greylisting=policy.greylisting if row.greylisting is None else row.greylisting,
    )


def _override(session: Session, scope: Scope, scope_id: int) -> ScanPolicyOverride | None:
    column = ScanPolicyOverride.customer_id if scope == "customer" else ScanPolicyOverride.domain_id
    return session.scalar(select(ScanPolicyOverride).where(column == scope_id))


def customer_policy(session: Session, *, customer_id: int, defaults: ScanPolicy) -> ScanPolicy:
    return _apply(defaults, _override(session, "customer", customer_id))


def domain_policy(session: Session, *, domain_id: int, defaults: ScanPolicy) -> ScanPolicy:
    """The effective policy of a domain: defaults, then its customer's, then its own."""
    domain = get_domain(session, domain_id=domain_id)
    policy = customer_policy(session, customer_id=domain.customer_id, defaults=defaults)
    return _apply(policy, _override(session, "domain", domain_id))


def own_override(session: Session, *, scope: Scope, scope_id: int) -> dict[str, object]:
    """The fields a customer or domain sets itself (None: inherited)."""
    row = _override(session, scope, scope_id)
    return {name: (getattr(row, name) if row is not None else None) for name in _FIELDS}


@isp_only("change scanning policy")
def set_override(
    session: Session, *, actor: Actor, scope: Scope, scope_id: int, change: PolicyChange
) -> ScanPolicyOverride:
    """Set (or clear, with None) fields of a customer's or domain's own policy; audited as
    ``<scope>.scan_policy_changed``. The effective tag score must stay below the reject score
    (checked against what the scope then inherits)."""
    _check_score(change.reject_score, "reject_score")
    _check_score(change.tag_score, "tag_score")
    _check_tag(change.subject_tag)
    if change.greylisting not in (None, ..., True, False):
        raise ValidationError("greylisting must be true or false", field="greylisting")
    if scope == "customer":
        owner_name = get_customer(session, customer_id=scope_id).name
    else:
        owner_name = get_domain(session, domain_id=scope_id).name
    row = _override(session, scope, scope_id)
    if row is None:
        row = ScanPolicyOverride(
            customer_id=scope_id if scope == "customer" else None,
            domain_id=scope_id if scope == "domain" else None,
        )
        session.add(row)
    changes: list[str] = []
    for name in _FIELDS:
        value = getattr(change, name)
        if value is ... or getattr(row, name) == value:
            continue
        changes.append(f"{name}: {getattr(row, name)!r} -> {value!r}")
        setattr(row, name, float(value) if name.endswith("_score") and value is not None else value)
    session.flush()
    both = (row.reject_score, row.tag_score)
    if None not in both and both[1] >= both[0]:  # type: ignore[operator]
        raise ValidationError("tag_score must be below reject_score", field="tag_score")
    if changes:
        audit(
            session,
            actor=actor,
            action=f"{scope}.scan_policy_changed",
            object_type=scope,
            object_id=scope_id,
            object_name=owner_name,
            detail="; ".join(changes),
        )
    return row


# ---------------------------------------------------------------- allow and block lists
def classify_entry(value: str) -> tuple[str, str]:
    """(kind, normalised value) of a list entry: a network, a sender address or a domain."""
    text = value.strip()
    if not text:
        raise ValidationError("the entry is empty", field="value")
    if "/" in text or _looks_like_ip(text):
        try:
            return "network", str(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise ValidationError(f"invalid network {text!r}", field="value") from exc
    if "@" in text:
        return "sender", normalise_address(text, field="value")
    return "domain", normalise_domain(text.lstrip("@"), field="value")


def _looks_like_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@isp_only("change scanning policy")
def add_list_entry(
    session: Session, *, actor: Actor, domain_id: int, list_name: ListName, value: str
) -> ScanListEntry:
    if list_name not in (SCAN_LIST_ALLOW, SCAN_LIST_BLOCK):
        raise ValidationError("list must be 'allow' or 'block'", field="list")
    domain = get_domain(session, domain_id=domain_id)
    kind, clean = classify_entry(value)
    existing = session.scalar(
        select(ScanListEntry).where(
            ScanListEntry.domain_id == domain_id,
            ScanListEntry.list_name == list_name,
            ScanListEntry.value == clean,
        )
    )
    if existing is not None:
        raise ConflictError(f"{clean} is already on the {list_name} list of {domain.name}")
    count = len(list_entries(session, domain_id=domain_id, list_name=list_name))
    if count >= MAX_LIST_ENTRIES:
        raise ValidationError(f"the {list_name} list is full ({MAX_LIST_ENTRIES} entries)")
    entry = ScanListEntry(domain_id=domain_id, list_name=list_name, kind=kind, value=clean)
    session.add(entry)
    session.flush()
    audit(
        session,
        actor=actor,
        action=f"domain.scan_{list_name}_added",
        object_type="domain",
        object_id=domain_id,
        object_name=domain.name,
        detail=clean,
    )
    return entry


@isp_only("change scanning policy")
def remove_list_entry(
    session: Session, *, actor: Actor, domain_id: int, list_name: ListName, value: str
) -> None:
    domain = get_domain(session, domain_id=domain_id)
    _, clean = classify_entry(value)
    removed = session.execute(
        delete(ScanListEntry).where(
            ScanListEntry.domain_id == domain_id,
            ScanListEntry.list_name == list_name,
            ScanListEntry.value == clean,
        )
    ).rowcount  # type: ignore[attr-defined]
    if not removed:
        raise NotFoundError(f"{clean} is not on the {list_name} list of {domain.name}")
    audit(
        session,
        actor=actor,
        action=f"domain.scan_{list_name}_removed",
        object_type="domain",
        object_id=domain_id,
        object_name=domain.name,
        detail=clean,
    )


def list_entries(
    session: Session, *, domain_id: int, list_name: ListName | None = None
) -> list[ScanListEntry]:
    stmt = select(ScanListEntry).where(ScanListEntry.domain_id == domain_id)
    if list_name is not None:
        stmt = stmt.where(ScanListEntry.list_name == list_name)
    return list(session.scalars(stmt.order_by(ScanListEntry.list_name, ScanListEntry.value)))


# ---------------------------------------------------------------- what the ingress asks
@dataclass(frozen=True, slots=True)
class DomainScanRules:
    """Everything the ingress needs about one recipient domain, detached from the session."""

    policy: ScanPolicy
    allow: tuple[tuple[str, str], ...] = ()  # (kind, value)
    block: tuple[tuple[str, str], ...] = ()

    def verdict(self, *, sender: str, client_ip: str) -> ListName | None:
        """ "block", "allow" or None for this sender and client (block wins)."""
        if _matches(self.block, sender, client_ip):
            return "block"
        if _matches(self.allow, sender, client_ip):
            return "allow"
        return None


def _matches(entries: Iterable[tuple[str, str]], sender: str, client_ip: str) -> bool:
    sender = sender.lower()
    sender_domain = sender.rpartition("@")[2] if "@" in sender else ""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        address = None
    for kind, value in entries:
        if kind == "sender" and sender == value:
            return True
        if (
            kind == "domain"
            and sender_domain
            and (sender_domain == value or sender_domain.endswith("." + value))
        ):
            return True
        if kind == "network" and address is not None:
            network = ipaddress.ip_network(value)
            if address.version == network.version and address in network:
                return True
    return False


# Whether a domain has an override, its customer has one, or the domain has list entries.
_OWN_RULES = select(
    exists().where(ScanPolicyOverride.domain_id == Domain.id),
    exists().where(ScanPolicyOverride.customer_id == Domain.customer_id),
    exists().where(ScanListEntry.domain_id == Domain.id),
).where(Domain.name == bindparam("name"))


def rules_for_domain(
    session: Session | Connection, *, domain_name: str, defaults: ScanPolicy
) -> DomainScanRules:
    """The effective policy and lists of a hosted domain by name (defaults when unknown).

    Through a Core connection (the MX, once per recipient domain it has not seen lately) one
    SELECT first says whether the domain or its customer has anything of its own: most have
    not, and get the defaults without the ORM's five queries; the others are read as
    through a Session, on that connection."""
    if isinstance(session, Connection):
        own = session.execute(_OWN_RULES, {"name": domain_name.lower()}).first()
        if own is None or not any(own):
            return DomainScanRules(defaults)
        with Session(bind=session) as orm:
            return rules_for_domain(orm, domain_name=domain_name, defaults=defaults)
    domain = session.scalar(select(Domain).where(Domain.name == domain_name.lower()))
    if domain is None:
        return DomainScanRules(defaults)
    policy = domain_policy(session, domain_id=domain.id, defaults=defaults)
    entries = list_entries(session, domain_id=domain.id)
    allow = tuple((e.kind, e.value) for e in entries if e.list_name == SCAN_LIST_ALLOW)
    block = tuple((e.kind, e.value) for e in entries if e.list_name == SCAN_LIST_BLOCK)
    return DomainScanRules(policy, allow, block)


def most_lenient(policies: Sequence[ScanPolicy]) -> ScanPolicy:
    """One policy for a message to several domains: the highest reject score (no domain's
    mail is refused under another domain's stricter rule), greylisting only if all want it;
    tagging stays per copy (each copy gets its own domain's tag threshold and subject tag)."""
    first = policies[0]
    return replace(
        first,
        reject_score=max(p.reject_score for p in policies),
        greylisting=all(p.greylisting for p in policies),
    )
