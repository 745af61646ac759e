"""DKIM keys of hosted domains (generate, rotate, retire, list, the signing key) and the DNS
records a hosted domain is told to publish (MX, SPF, one DKIM TXT per published key, DMARC).

Key life: ``active`` (signs the domain's mail; at most one per domain) -> ``published`` (a
rotation made a newer key the signing key; this one signs nothing, but its record stays so
that mail signed with it, still in transit or in mailboxes, verifies) -> ``retired`` (the
operator withdrew it: its record is no longer recommended and its private key is erased).
A new key signs at once, so its record must be published promptly; until then receivers
see a signature they cannot verify (treated as no signature, RFC 6376 section 6.1.2), and
SPF still passes. Retired selectors are never reused (resolvers may cache the old record).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import dkim
from app.config import Settings
from app.errors import ConflictError, NotFoundError, ValidationError
from app.models import (
    DKIM_ACTIVE,
    DKIM_PUBLISHED,
    DKIM_RETIRED,
    DKIM_RSA_SHA256,
    DOMAIN_RELAY,
    DkimKey,
    Domain,
    utcnow,
)
from app.services.addresses import normalise_domain
from app.services.audit import Actor, audit
from app.services.common import flush_or_conflict
from app.services.domains import get_domain
from app.services.tenancy import isp_only

# Prefix of generated selectors: "mh" + the UTC date, e.g. mh20261202 (then -2, -3...).
SELECTOR_PREFIX = "mh"


@dataclass(frozen=True, slots=True)
class DnsPolicy:
    """The ISP's choices behind the recommended records (from Settings)."""

    mx_hostname: str
    spf_include: str | None = None
    dmarc_report_address: str | None = None
    dmarc_policy: str = "none"

    @classmethod
    def from_settings(cls, settings: Settings) -> DnsPolicy:
        return cls(
            mx_hostname=settings.mx_hostname,
            spf_include=settings.spf_include,
            dmarc_report_address=settings.dmarc_report_address,
            dmarc_policy=settings.dmarc_policy,
        )


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """One record to publish. ``value`` is the record data as a DNS provider's form takes it
    (a TXT record's text unquoted, even past 255 octets); ``zone_text`` the same for a zone
    file (TXT split into quoted strings of at most 255 octets)."""

    purpose: str  # 'mx', 'spf', 'dkim', 'dmarc'
    type: str
    name: str  # fully qualified, with the trailing dot
    value: str
    zone_text: str
    note: str
    selector: str | None = None


def _lock_domain(session: Session, domain_id: int) -> Domain:
    """The domain, row-locked until commit on PostgreSQL so that two key changes of one domain
    run one after the other (SQLite serialises writers anyway)."""
    domain = session.scalar(select(Domain).where(Domain.id == domain_id).with_for_update())
    if domain is None:
        raise NotFoundError(f"no domain with id {domain_id}", field="domain_id")
    return domain


def list_keys(session: Session, *, domain_id: int, include_retired: bool = True) -> list[DkimKey]:
    """The domain's keys, newest first (NotFoundError for an unknown domain)."""
    get_domain(session, domain_id=domain_id)
    query = select(DkimKey).where(DkimKey.domain_id == domain_id)
    if not include_retired:
        query = query.where(DkimKey.state != DKIM_RETIRED)
    return list(session.scalars(query.order_by(DkimKey.created_at.desc(), DkimKey.id.desc())))


def active_key(session: Session, *, domain_id: int) -> DkimKey | None:
    return session.scalar(
        select(DkimKey).where(DkimKey.domain_id == domain_id, DkimKey.state == DKIM_ACTIVE)
    )


def _free_selector(session: Session, domain_id: int) -> str:
    taken = set(session.scalars(select(DkimKey.selector).where(DkimKey.domain_id == domain_id)))
    base = f"{SELECTOR_PREFIX}{utcnow():%Y%m%d}"
    selector, n = base, 1
    while selector in taken:
        n += 1
        selector = f"{base}-{n}"
    return selector


@isp_only("manage DKIM keys")
def generate_key(
    session: Session,
    *,
    actor: Actor,
    domain_id: int,
    selector: str | None = None,
    algorithm: str = DKIM_RSA_SHA256,
) -> DkimKey:
    """A new key that becomes the domain's signing key at once. If the domain had one, that
    key stays published (state 'published') until the operator retires it: this is also how
    a rotation is done. ``selector`` defaults to ``mh<yyyymmdd>``; a selector the domain has
    ever used is refused (ConflictError), ``algorithm`` is 'rsa' or 'ed25519' (either name)."""
    algorithm = dkim.normalise_algorithm(algorithm)
    chosen = None if selector is None or not selector.strip() else dkim.check_selector(selector)
    domain = _lock_domain(session, domain_id)
    if chosen is None:
        chosen = _free_selector(session, domain.id)
    elif session.scalar(
        select(DkimKey.id).where(DkimKey.domain_id == domain.id, DkimKey.selector == chosen)
    ):
        raise ConflictError(
            f"selector {chosen} of {domain.name} is taken (selectors are never reused)",
            field="selector",
        )
    generated = dkim.generate_key(algorithm)  # the slow step (RSA), after every check
    previous = active_key(session, domain_id=domain.id)
    if previous is not None:
        previous.state = DKIM_PUBLISHED
        session.flush()
    key = DkimKey(
        domain_id=domain.id,
        selector=chosen,
        algorithm=generated.algorithm,
        key_bits=generated.bits,
        private_key_pem=generated.private_key_pem,
        public_key=generated.public_key,
        state=DKIM_ACTIVE,
    )
    session.add(key)
    flush_or_conflict(
        session, f"the DKIM keys of {domain.name} changed meanwhile; try again", field="selector"
    )
    audit(
        session,
        actor=actor,
        action="dkim.rotate" if previous is not None else "dkim.generate",
        object_type="domain",
        object_id=domain.id,
        object_name=domain.name,
        detail=(
            f"selector={chosen} algorithm={generated.algorithm}"
            + (f"; {previous.selector} no longer signs (still published)" if previous else "")
        ),
    )
    return key


@isp_only("manage DKIM keys")
def rotate_key(
    session: Session,
    *,
    actor: Actor,
    domain_id: int,
    selector: str | None = None,
    algorithm: str | None = None,
) -> DkimKey:
    """Like ``generate_key``, but the domain must have a signing key already (ConflictError
    otherwise, so a mistyped domain is not silently given its first key); the algorithm
    defaults to the current key's."""
    current = active_key(session, domain_id=get_domain(session, domain_id=domain_id).id)
    if current is None:
        raise ConflictError(
            "the domain has no signing key to rotate; generate one", field="domain_id"
        )
    return generate_key(
        session,
        actor=actor,
        domain_id=domain_id,
        selector=selector,
        algorithm=algorithm or current.algorithm,
    )


@isp_only("manage DKIM keys")
def retire_key(session: Session, *, actor: Actor, domain_id: int, selector: str) -> DkimKey:
    """Withdraw a key: its record is no longer recommended and its private key is erased.
    Retiring the signing key leaves the domain's mail unsigned until a new key is generated.
    NotFoundError for an unknown selector, ConflictError if it is retired already."""
    domain = _lock_domain(session, domain_id)
    wanted = selector.strip().lower()
    key = session.scalar(
        select(DkimKey).where(DkimKey.domain_id == domain.id, DkimKey.selector == wanted)
    )
    if key is None:
        raise NotFoundError(f"{domain.name} has no DKIM key {wanted!r}", field="selector")
    if key.state == DKIM_RETIRED:
        raise ConflictError(
            f"DKIM key {wanted} of {domain.name} is retired already", field="selector"
        )
    was_signing = key.state == DKIM_ACTIVE
    key.state = DKIM_RETIRED
    key.retired_at = utcnow()
    key.private_key_pem = None
    session.flush()
    audit(
        session,
        actor=actor,
        action="dkim.retire",
        object_type="domain",
        object_id=domain.id,
        object_name=domain.name,
        detail=f"selector={wanted}"
        + ("; it was the signing key: mail is unsigned until a new key" if was_signing else ""),
    )
    return key


def signing_key_for(session: Session, *, domain: str) -> dkim.SigningKey | None:
    """The key to sign mail from ``domain`` (Unicode or IDNA) with, or None: not hosted, no
    active key, or an alias domain (which has no keys: its From would not align with a
    signature of the target domain for DMARC, RFC 7489 section 3.1.1, so none is made)."""
    try:
        name = normalise_domain(domain)
    except ValidationError:
        return None
    row = session.execute(
        select(DkimKey.selector, DkimKey.algorithm, DkimKey.private_key_pem)
        .join(Domain, Domain.id == DkimKey.domain_id)
        .where(Domain.name == name, DkimKey.state == DKIM_ACTIVE)
    ).first()
    if row is None or row.private_key_pem is None:
        return None
    return dkim.SigningKey(
        domain=name,
        selector=row.selector,
        algorithm=row.algorithm,
        private_key_pem=row.private_key_pem,
    )


def _txt(purpose: str, name: str, value: str, note: str, selector: str | None = None) -> DnsRecord:
    return DnsRecord(
        purpose=purpose,
        type="TXT",
        name=name,
        value=value,
        zone_text=dkim.zone_file_text(value),
        note=note,
        selector=selector,
    )


def spf_value(policy: DnsPolicy) -> str:
    """``v=spf1 mx [include:<ISP>] -all`` (RFC 7208): the domain's mail leaves through the
    ISP's hosts only; -all says everything else is not the domain's."""
    include = f" include:{policy.spf_include}" if policy.spf_include else ""
    return f"v=spf1 mx{include} -all"


def dmarc_value(policy: DnsPolicy) -> str:
    """``v=DMARC1; p=<policy>[; rua=mailto:...]`` (RFC 7489 section 6.3)."""
    rua = f"; rua=mailto:{policy.dmarc_report_address}" if policy.dmarc_report_address else ""
    return f"v=DMARC1; p={policy.dmarc_policy}{rua}"


def recommended_records(session: Session, *, domain_id: int, policy: DnsPolicy) -> list[DnsRecord]:
    """The records the customer publishes: MX (required, mail reaches us), SPF, one DKIM TXT
    per key not retired (the signing key first), DMARC."""
    domain = get_domain(session, domain_id=domain_id)
    fqdn = f"{domain.name}."
    mx = f"10 {policy.mx_hostname.rstrip('.')}."
    if domain.kind == DOMAIN_RELAY:
        # The customer's own server sends the domain's mail (its SPF, DKIM and DMARC are its
        # own business); we are its MX. The backup-MX variant: app/services/relay_dns.py.
        note = "required: mail for the domain reaches us; we forward it to the customer's server"
        return [DnsRecord("mx", "MX", fqdn, mx, mx, note)]
    records = [
        DnsRecord("mx", "MX", fqdn, mx, mx, "required: mail for the domain reaches us"),
        _txt(
            "spf",
            fqdn,
            spf_value(policy),
            "SPF: add any other service that sends mail as the domain before -all",
        ),
    ]
    keys = list_keys(session, domain_id=domain.id, include_retired=False)
    keys.sort(key=lambda k: k.state != DKIM_ACTIVE)  # stable: newest first otherwise
    for key in keys:
        records.append(
            _txt(
                "dkim",
                dkim.record_name(key.selector, domain.name),
                dkim.record_value(key.algorithm, key.public_key),
                "DKIM: the signing key"
                if key.state == DKIM_ACTIVE
                else "DKIM: an earlier key, keep until it is retired",
                selector=key.selector,
            )
        )
    records.append(
        _txt(
            "dmarc",
            f"_dmarc.{fqdn}",
            dmarc_value(policy),
            "DMARC: start with p=none and read the reports, then tighten",
        )
    )
    return records
