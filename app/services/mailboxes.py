"""Mailboxes: create, change, suspend, delete; usage comes from the Maildir store."""

from __future__ import annotations

import re
import secrets

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload

from app.errors import ConflictError, LimitExceededError, NotFoundError, ValidationError
from app.models import Alias, Domain, Mailbox
from app.passwords import hash_password, is_supported_hash
from app.services.addresses import split_address
from app.services.audit import Actor, audit, record_lifecycle
from app.services.common import check_status, flush_or_conflict
from app.services.domains import (
    MAX_BYTES,
    address_forms,
    forget_addresses,
    get_domain_by_name,
    require_hosted,
    usage_of,
)
from app.services.tenancy import check_visible

MIN_PASSWORD_LENGTH = 8
# Long enough for any passphrase, short enough that hashing it is not a denial of service.
MAX_PASSWORD_LENGTH = 1024
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
# No 0/O, 1/l/I: passwords get read aloud over the phone to customers.
_PASSWORD_ALPHABET = "abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # noqa: S105


def parse_size(text: str) -> int:
    """'1G', '500M', '100k', '1024' -> bytes (binary units). Raises ValidationError."""
    match = _SIZE.match(str(text))
    if not match:
        raise ValidationError(
            f"invalid size {text!r} (use bytes or a number with K, M, G or T)", field="quota"
        )
    number, unit = match.groups()
    factor = _UNITS[unit.lower()]
    # Integers stay exact; a fraction ("1.5G") is rounded down to whole bytes.
    value = int(float(number) * factor) if "." in number else int(number) * factor
    if value > MAX_BYTES:
        raise ValidationError(f"size {text!r} is too large", field="quota")
    return value


def check_password(password: str, *, field: str = "password") -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationError(
            f"password must have at least {MIN_PASSWORD_LENGTH} characters", field=field
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValidationError(
            f"password must have at most {MAX_PASSWORD_LENGTH} characters", field=field
        )
    if "\x00" in password:
        raise ValidationError("password may not contain NUL characters", field=field)
    return password


def _new_hash(password: str | None, password_hash: str | None) -> str:
    if (password is None) == (password_hash is None):
        raise ValidationError("give exactly one of password or password hash", field="password")
    if password is not None:
        return hash_password(check_password(password))
    assert password_hash is not None
    if not is_supported_hash(password_hash):
        raise ValidationError(
            "password hash is not in a supported scheme (argon2, SHA512-CRYPT, BLF-CRYPT, "
            "MD5-CRYPT)",
            field="password_hash",
        )
    return password_hash.strip()


def _check_quota(quota_bytes: int) -> int:
    if isinstance(quota_bytes, bool) or not isinstance(quota_bytes, int):
        raise ValidationError("quota must be a whole number of bytes", field="quota_bytes")
    if quota_bytes < 0 or quota_bytes > MAX_BYTES:
        raise ValidationError(f"quota must be between 0 and {MAX_BYTES}", field="quota_bytes")
    return quota_bytes


def _check_customer_quota(actor: Actor, quota_bytes: int) -> None:
    # 0 means unlimited: that is for the ISP to grant, not for a customer's administrator
    # (it would also slip past the domain's total quota, which sums the quotas).
    if actor.customer_id is not None and quota_bytes == 0:
        raise LimitExceededError(
            "an unlimited quota can only be set by your provider", field="quota_bytes"
        )


def _lifecycle(session: Session, mailbox: Mailbox, action: str) -> None:
    record_lifecycle(
        session,
        entity="mailbox",
        entity_id=mailbox.id,
        action=action,
        customer_id=mailbox.domain.customer_id,
        domain_name=mailbox.domain.name,
        address=mailbox.address,
    )


def create_mailbox(
    session: Session,
    *,
    actor: Actor,
    address: str,
    password: str | None = None,
    password_hash: str | None = None,
    quota_bytes: int | None = None,
    pop3_enabled: bool = True,
) -> Mailbox:
    """Exactly one of password / password_hash (a hash in a supported scheme, for imports).
    Domain must exist; address unique across mailboxes AND aliases; domain max_mailboxes and
    total quota enforced (LimitExceededError); quota defaults to the domain's default.
    Passwords: at least 8 characters. Records a 'created' lifecycle event."""
    local, domain_name = split_address(address)
    normalised = f"{local}@{domain_name}"
    if quota_bytes is not None:
        _check_quota(quota_bytes)
    if (password is None) == (password_hash is None):
        raise ValidationError("give exactly one of password or password hash", field="password")
    if password is not None:
        check_password(password)
    domain = get_domain_by_name(session, name=domain_name, actor=actor)
    require_hosted(domain, what="mailboxes")
    if session.scalar(
        select(Mailbox.id).where(Mailbox.domain_id == domain.id, Mailbox.local_part == local)
    ):
        raise ConflictError(f"mailbox {normalised} already exists", field="address")
    if session.scalar(
        select(Alias.id).where(Alias.domain_id == domain.id, Alias.local_part == local)
    ):
        raise ConflictError(f"{normalised} is already an alias", field="address")
    quota = domain.default_quota_bytes if quota_bytes is None else quota_bytes
    if quota_bytes is not None:
        _check_customer_quota(actor, quota)
    count, quota_sum = usage_of(session, domain.id)
    if domain.max_mailboxes is not None and count + 1 > domain.max_mailboxes:
        raise LimitExceededError(
            f"{domain.name} may have at most {domain.max_mailboxes} mailboxes",
            field="address",
        )
    if domain.total_quota_bytes is not None and quota_sum + quota > domain.total_quota_bytes:
        raise LimitExceededError(
            f"quota {quota} would exceed the total quota of {domain.name} "
            f"({domain.total_quota_bytes - quota_sum} of {domain.total_quota_bytes} bytes left)",
            field="quota_bytes",
        )
    # Hash last: it is the slow part, and pointless if validation fails.
    stored = _new_hash(password, password_hash)
    mailbox = Mailbox(
        domain=domain,
        local_part=local,
        password_hash=stored,
        quota_bytes=quota,
        status="active",
        pop3_enabled=bool(pop3_enabled),
    )
    session.add(mailbox)
    flush_or_conflict(session, f"mailbox {normalised} already exists", field="address")
    audit(
        session,
        actor=actor,
        action="mailbox.create",
        object_type="mailbox",
        object_id=mailbox.id,
        object_name=normalised,
        detail=f"quota={quota}" + (" (imported hash)" if password_hash is not None else ""),
    )
    _lifecycle(session, mailbox, "created")
    return mailbox


def get_mailbox(session: Session, *, mailbox_id: int, actor: Actor | None = None) -> Mailbox:
    """Raises NotFoundError, also for another customer's mailbox (``tenancy``)."""
    mailbox = session.get(Mailbox, mailbox_id)
    message = f"no mailbox with id {mailbox_id}"
    if mailbox is None:
        raise NotFoundError(message, field="mailbox_id")
    check_visible(actor, mailbox.domain.customer_id, message=message, field="mailbox_id")
    return mailbox


def find_mailbox(session: Session, *, address: str) -> Mailbox | None:
    """The mailbox at ``address`` (normalised), or None; raises ValidationError if invalid."""
    local, domain_name = split_address(address)
    return session.scalar(
        select(Mailbox)
        .join(Domain, Mailbox.domain_id == Domain.id)
        .where(Domain.name == domain_name, Mailbox.local_part == local)
        .options(joinedload(Mailbox.domain).joinedload(Domain.customer))
    )


def get_mailbox_by_address(session: Session, *, address: str) -> Mailbox:
    """Normalised lookup (any case). Raises NotFoundError / ValidationError."""
    mailbox = find_mailbox(session, address=address)
    if mailbox is None:
        local, domain_name = split_address(address)
        raise NotFoundError(f"no mailbox {local}@{domain_name}", field="address")
    return mailbox


def list_mailboxes(
    session: Session,
    *,
    domain_id: int | None = None,
    customer_id: int | None = None,
    search: str | None = None,
    status: str | None = None,
    after_id: int | None = None,
    limit: int = 50,
) -> list[Mailbox]:
    """Ordered by id, keyset pagination; must stay fast with 100,000 mailboxes."""
    # Keyset on the primary key (no OFFSET), the domain joined in the same query so listing
    # N mailboxes is one statement, not N+1.
    query = (
        select(Mailbox)
        .join(Domain, Mailbox.domain_id == Domain.id)
        .options(joinedload(Mailbox.domain))
        .order_by(Mailbox.id)
    )
    if domain_id is not None:
        query = query.where(Mailbox.domain_id == domain_id)
    if customer_id is not None:
        query = query.where(Domain.customer_id == customer_id)
    if search:
        needle = search.strip().lower()
        escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = f"%{escaped}%"
        query = query.where((Mailbox.local_part + "@" + Domain.name).like(pattern, escape="\\"))
    if status is not None:
        query = query.where(Mailbox.status == check_status(status))
    if after_id is not None:
        query = query.where(Mailbox.id > after_id)
    return list(session.scalars(query.limit(max(0, limit))))


def count_mailboxes(
    session: Session, *, domain_id: int | None = None, status: str | None = None
) -> int:
    query = select(func.count(Mailbox.id))
    if domain_id is not None:
        query = query.where(Mailbox.domain_id == domain_id)
    if status is not None:
        query = query.where(Mailbox.status == check_status(status))
    return int(session.scalar(query) or 0)


def set_password(
    session: Session,
    *,
    actor: Actor,
    mailbox_id: int,
    password: str | None = None,
    password_hash: str | None = None,
) -> Mailbox:
    mailbox = get_mailbox(session, mailbox_id=mailbox_id, actor=actor)
    mailbox.password_hash = _new_hash(password, password_hash)
    session.flush()
    audit(
        session,
        actor=actor,
        action="mailbox.password",
        object_type="mailbox",
        object_id=mailbox.id,
        object_name=mailbox.address,
        detail="imported hash" if password_hash is not None else "password set",
    )
    return mailbox


def update_mailbox(
    session: Session,
    *,
    actor: Actor,
    mailbox_id: int,
    quota_bytes: int | None = None,
    pop3_enabled: bool | None = None,
) -> Mailbox:
    mailbox = get_mailbox(session, mailbox_id=mailbox_id, actor=actor)
    changes: list[str] = []
    if quota_bytes is not None:
        _check_quota(quota_bytes)
        if quota_bytes != mailbox.quota_bytes:
            _check_customer_quota(actor, quota_bytes)
        domain = mailbox.domain
        if domain.total_quota_bytes is not None and quota_bytes > mailbox.quota_bytes:
            _, quota_sum = usage_of(session, domain.id)
            if quota_sum - mailbox.quota_bytes + quota_bytes > domain.total_quota_bytes:
                raise LimitExceededError(
                    f"quota {quota_bytes} would exceed the total quota of {domain.name} "
                    f"({domain.total_quota_bytes} bytes)",
                    field="quota_bytes",
                )
        if quota_bytes != mailbox.quota_bytes:
            changes.append(f"quota: {mailbox.quota_bytes} -> {quota_bytes}")
            mailbox.quota_bytes = quota_bytes
    if pop3_enabled is not None and bool(pop3_enabled) != mailbox.pop3_enabled:
        changes.append(f"pop3_enabled: {mailbox.pop3_enabled} -> {bool(pop3_enabled)}")
        mailbox.pop3_enabled = bool(pop3_enabled)
    if changes:
        session.flush()
        audit(
            session,
            actor=actor,
            action="mailbox.update",
            object_type="mailbox",
            object_id=mailbox.id,
            object_name=mailbox.address,
            detail="; ".join(changes),
        )
    return mailbox


def set_mailbox_status(session: Session, *, actor: Actor, mailbox_id: int, status: str) -> Mailbox:
    """Records 'suspended' / 'resumed' lifecycle events (no event if unchanged)."""
    check_status(status)
    mailbox = get_mailbox(session, mailbox_id=mailbox_id, actor=actor)
    if mailbox.status == status:
        return mailbox
    mailbox.status = status
    session.flush()
    suspended = status == "suspended"
    audit(
        session,
        actor=actor,
        action="mailbox.suspend" if suspended else "mailbox.resume",
        object_type="mailbox",
        object_id=mailbox.id,
        object_name=mailbox.address,
    )
    _lifecycle(session, mailbox, "suspended" if suspended else "resumed")
    return mailbox


def delete_mailbox(session: Session, *, actor: Actor, mailbox_id: int) -> None:
    """Deletes the row and every reference to its addresses: alias targets naming it are
    removed (an alias left without targets is deleted) and catch-alls naming it cleared, so a
    mailbox created at that address later does not inherit its mail (see
    ``domains.forget_addresses``). Records a 'deleted' lifecycle event. Message files are
    removed by the edge after commit with ``removal.remove_maildirs``."""
    mailbox = get_mailbox(session, mailbox_id=mailbox_id, actor=actor)
    _lifecycle(session, mailbox, "deleted")
    audit(
        session,
        actor=actor,
        action="mailbox.delete",
        object_type="mailbox",
        object_id=mailbox.id,
        object_name=mailbox.address,
    )
    forms = address_forms(session, domain=mailbox.domain, local_part=mailbox.local_part)
    session.delete(mailbox)
    session.flush()
    forget_addresses(session, actor=actor, reason="mailbox deleted", addresses=forms)


def generate_password() -> str:
    """A random password of 16 characters from an unambiguous alphabet."""
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(16))
