"""Mailboxes: create, change, suspend, delete; usage comes from the Maildir store."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.models import Mailbox
from app.services.audit import Actor


def parse_size(text: str) -> int:
    """'1G', '500M', '100k', '1024' -> bytes (binary units). Raises ValidationError."""
    raise NotImplementedError


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
    raise NotImplementedError


def get_mailbox(session: Session, *, mailbox_id: int) -> Mailbox:
    raise NotImplementedError


def get_mailbox_by_address(session: Session, *, address: str) -> Mailbox:
    """Normalised lookup (any case). Raises NotFoundError / ValidationError."""
    raise NotImplementedError


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
    raise NotImplementedError


def count_mailboxes(
    session: Session, *, domain_id: int | None = None, status: str | None = None
) -> int:
    raise NotImplementedError


def set_password(
    session: Session,
    *,
    actor: Actor,
    mailbox_id: int,
    password: str | None = None,
    password_hash: str | None = None,
) -> Mailbox:
    raise NotImplementedError


def update_mailbox(
    session: Session,
    *,
    actor: Actor,
    mailbox_id: int,
    quota_bytes: int | None = None,
    pop3_enabled: bool | None = None,
) -> Mailbox:
    raise NotImplementedError


def set_mailbox_status(session: Session, *, actor: Actor, mailbox_id: int, status: str) -> Mailbox:
    """Records 'suspended' / 'resumed' lifecycle events (no event if unchanged)."""
    raise NotImplementedError


def delete_mailbox(session: Session, *, actor: Actor, mailbox_id: int) -> None:
    """Deletes the row (and alias targets pointing at it stay as dangling addresses, ignored by
    resolution); records a 'deleted' lifecycle event. Message files are removed by the edge
    after commit with ``MaildirStore.remove_mailbox``."""
    raise NotImplementedError


def generate_password() -> str:
    """A random password of 16 characters from an unambiguous alphabet."""
    raise NotImplementedError
