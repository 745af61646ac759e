"""Recipient resolution: an address to the set of mailboxes it delivers to, or why not."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from app.maildir import MailboxRef, MaildirStore


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


def resolve_recipient(
    session: Session, *, address: str, store: MaildirStore | None = None
) -> Resolution:
    """Resolve ``address`` (as given after RCPT TO, brackets removed).

    Follows aliases (possibly chained), domain aliases and the domain's catch-all, loop-safe
    (a cycle or depth > 10 ends that branch), case-insensitive on the domain (and local part).
    ``postmaster@`` of every hosted domain (or alias domain) always resolves: to a mailbox or
    alias of that name if there is one, else to the domain's catch-all, else to the first
    mailbox of the domain (RFC 5321 section 4.5.1). Duplicates are removed. With ``store``,
    targets over quota are dropped and OVER_QUOTA returned if none remain.
    """
    raise NotImplementedError
