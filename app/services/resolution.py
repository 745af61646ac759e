"""Recipient resolution: an address to the set of mailboxes it delivers to, or why not.

Theory of operation: the address is parsed with ``app.services.addresses`` (anything we could
not host is INVALID_ADDRESS), its domain looked up (domains and alias domains, with the
customer's status), then the address is expanded breadth-first: each level loads the mailboxes
of all pending addresses in one query and the aliases of the rest in a second, so a plain
mailbox costs two queries and a chain of N aliases about 2N+2. A visited set and a depth limit
end cycles. The domain's catch-all and the postmaster fallback apply to the address as given
only; an alias target that no longer exists is ignored, never redirected.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from app.errors import ValidationError
from app.maildir import MailboxRef, MaildirStore
from app.models import STATUS_ACTIVE, Alias, AliasTarget, Customer, Domain, DomainAlias, Mailbox
from app.services.addresses import split_address

# Aliases pointing at aliases deeper than this are configuration errors (or loops).
MAX_DEPTH = 10
POSTMASTER = "postmaster"


class Verdict(enum.Enum):
    OK = "ok"
    INVALID_ADDRESS = "invalid_address"  # syntactically not an address we could host
    UNKNOWN_DOMAIN = "unknown_domain"  # not hosted: relay denied
    UNKNOWN_USER = "unknown_user"  # hosted domain, no such address
    SUSPENDED = "suspended"  # mailbox, domain or customer suspended
    OVER_QUOTA = "over_quota"  # every target mailbox is full


@dataclass(frozen=True, slots=True)
class Target:
    """A mailbox that will receive a copy."""

    mailbox_id: int
    address: str  # local@idna-domain, the Delivered-To value
    ref: MailboxRef
    quota_bytes: int


@dataclass(frozen=True, slots=True)
class Resolution:
    verdict: Verdict
    targets: tuple[Target, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK


@dataclass(frozen=True, slots=True)
class _DomainInfo:
    id: int
    name: str  # the real (target) domain's name, also when reached through an alias domain
    active: bool  # domain AND its customer active
    catchall: str | None


class _Resolver:
    """One resolution; caches domain lookups across the levels of the expansion."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.domains: dict[str, _DomainInfo | None] = {}

    def load_domains(self, names: set[str]) -> None:
        missing = names - self.domains.keys()
        if not missing:
            return
        rows = self.session.execute(
            select(Domain.id, Domain.name, Domain.status, Customer.status, Domain.catchall_target)
            .join(Customer, Domain.customer_id == Customer.id)
            .where(Domain.name.in_(missing))
        ).all()
        for dom_id, name, status, customer_status, catchall in rows:
            active = status == STATUS_ACTIVE and customer_status == STATUS_ACTIVE
            self.domains[name] = _DomainInfo(dom_id, name, active, catchall)
        missing -= {row[1] for row in rows}
        if missing:
            alias_rows = self.session.execute(
                select(
                    DomainAlias.name,
                    Domain.id,
                    Domain.name,
                    Domain.status,
                    Customer.status,
                    Domain.catchall_target,
                )
                .join(Domain, DomainAlias.target_domain_id == Domain.id)
                .join(Customer, Domain.customer_id == Customer.id)
                .where(DomainAlias.name.in_(missing))
            ).all()
            for alias_name, dom_id, name, status, customer_status, catchall in alias_rows:
                active = status == STATUS_ACTIVE and customer_status == STATUS_ACTIVE
                self.domains[alias_name] = _DomainInfo(dom_id, name, active, catchall)
                missing.discard(alias_name)
        for name in missing:
            self.domains[name] = None

    def first_mailbox(self, domain: _DomainInfo) -> Mailbox | None:
        """The oldest active mailbox of a domain: the postmaster of last resort."""
        return self.session.scalar(
            select(Mailbox)
            .where(Mailbox.domain_id == domain.id, Mailbox.status == STATUS_ACTIVE)
            .order_by(Mailbox.id)
            .limit(1)
        )


def _split_stored(address: str) -> tuple[str, str]:
    # Stored targets are already normalised (local@idna-domain); no need to re-validate.
    local, _, domain = address.rpartition("@")
    return local, domain


def _target(mailbox_id: int, local: str, domain: str, quota: int) -> Target:
    return Target(mailbox_id, f"{local}@{domain}", MailboxRef(domain, local), quota)


def resolve_recipient(
    session: Session, *, address: str, store: MaildirStore | None = None
) -> Resolution:
    """Resolve ``address`` (as given after RCPT TO, brackets removed).

    Follows aliases (possibly chained), domain aliases and the domain's catch-all, loop-safe
    (a cycle or depth > 10 ends that branch), case-insensitive on the domain (and local part).
    ``postmaster@`` of every hosted domain (or alias domain) always resolves: to a mailbox or
    alias of that name if there is one, else to the domain's catch-all, else to the first
    mailbox of the domain (RFC 5321 section 4.5.1). Duplicates are removed. With ``store``,
    targets over quota are dropped and OVER_QUOTA returned if none remain. A quota of 0 means
    no limit (as in Dovecot).
    """
    try:
        local, domain_name = split_address(address)
    except ValidationError:
        return Resolution(Verdict.INVALID_ADDRESS)
    resolver = _Resolver(session)
    resolver.load_domains({domain_name})
    top = resolver.domains[domain_name]
    if top is None:
        return Resolution(Verdict.UNKNOWN_DOMAIN)
    if not top.active:
        return Resolution(Verdict.SUSPENDED)

    found: dict[int, Target] = {}
    suspended_seen = False
    seen: set[tuple[int, str]] = set()
    frontier: list[tuple[str, str]] = [(local, domain_name)]
    depth = 0
    while frontier and depth <= MAX_DEPTH:
        resolver.load_domains({d for _, d in frontier})
        # (domain id, local part) -> domain info, in first-seen order, cycles cut here.
        level: dict[tuple[int, str], _DomainInfo] = {}
        for loc, dom in frontier:
            info = resolver.domains.get(dom)
            if info is None:
                continue  # dangling target of a domain no longer hosted
            key = (info.id, loc)
            if key in seen:
                continue
            seen.add(key)
            if not info.active:
                suspended_seen = True
                continue
            level[key] = info
        frontier = []
        if not level:
            break
        mailbox_rows = session.execute(
            select(
                Mailbox.id,
                Mailbox.domain_id,
                Mailbox.local_part,
                Mailbox.status,
                Mailbox.quota_bytes,
            )
            .where(tuple_(Mailbox.domain_id, Mailbox.local_part).in_(list(level)))
            .order_by(Mailbox.id)
        ).all()
        for mailbox_id, dom_id, loc, status, quota in mailbox_rows:
            info = level.pop((dom_id, loc))
            if status != STATUS_ACTIVE:
                suspended_seen = True
            elif mailbox_id not in found:
                found[mailbox_id] = _target(mailbox_id, loc, info.name, quota)
        if level:
            alias_rows = session.execute(
                select(Alias.domain_id, Alias.local_part, AliasTarget.address)
                .join(AliasTarget, AliasTarget.alias_id == Alias.id)
                .where(tuple_(Alias.domain_id, Alias.local_part).in_(list(level)))
                .order_by(Alias.id, AliasTarget.address)
            ).all()
            for dom_id, loc, target in alias_rows:
                level.pop((dom_id, loc), None)
                frontier.append(_split_stored(target))
        if depth == 0 and level:
            # The address as given is neither a mailbox nor an alias.
            frontier.extend(_fallback(resolver, top, local))
        depth += 1

    targets = list(found.values())
    if not targets:
        return Resolution(Verdict.SUSPENDED if suspended_seen else Verdict.UNKNOWN_USER)
    if store is not None:
        targets = [t for t in targets if not _over_quota(store, t)]
        if not targets:
            return Resolution(Verdict.OVER_QUOTA)
    return Resolution(Verdict.OK, tuple(targets))


def _fallback(resolver: _Resolver, domain: _DomainInfo, local: str) -> list[tuple[str, str]]:
    """Catch-all, then (for postmaster only) the domain's first mailbox."""
    if domain.catchall:
        return [_split_stored(domain.catchall)]
    if local == POSTMASTER:
        mailbox = resolver.first_mailbox(domain)
        if mailbox is not None:
            return [(mailbox.local_part, domain.name)]
    return []


def _over_quota(store: MaildirStore, target: Target) -> bool:
    if target.quota_bytes <= 0:
        return False
    return store.usage(target.ref).bytes >= target.quota_bytes
