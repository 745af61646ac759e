"""Cascading deletes' file side: the Maildirs a deletion frees, removed after the commit.

One policy for every door (portal, API, CLI): read the refs with ``refs_of_*`` BEFORE the
deletion, commit the deletion, then call ``remove_maildirs``. Files go only after the commit,
so a failed commit never loses messages. A Maildir that cannot be removed is logged with its
path and comes back as a warning for the caller to show; it never turns the finished
deletion into an error (the rows are gone, only files are left to clean up by hand).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from app.maildir import MailboxRef, MaildirError, MaildirStore
from app.models import Domain, Mailbox

log = logging.getLogger(__name__)


def _refs(session: Session, where: ColumnElement[bool]) -> list[MailboxRef]:
    query = (
        select(Domain.name, Mailbox.local_part)
        .select_from(Mailbox)
        .join(Domain, Mailbox.domain_id == Domain.id)
        .where(where)
        .order_by(Mailbox.id)
    )
    return [MailboxRef(domain=d, local_part=lp) for d, lp in session.execute(query)]


def refs_of_mailbox(session: Session, *, mailbox_id: int) -> list[MailboxRef]:
    """The Maildir deleting this mailbox frees (none if there is no such mailbox)."""
    return _refs(session, Mailbox.id == mailbox_id)


def refs_of_domain(session: Session, *, domain_id: int) -> list[MailboxRef]:
    """The Maildirs deleting this domain (with cascade) frees: those of all its mailboxes."""
    return _refs(session, Domain.id == domain_id)


def refs_of_customer(session: Session, *, customer_id: int) -> list[MailboxRef]:
    """The Maildirs deleting this customer (with cascade) frees: every mailbox of its domains."""
    return _refs(session, Domain.customer_id == customer_id)


@dataclass(frozen=True, slots=True)
class LeftoverMaildir:
    """A deleted mailbox whose Maildir could not be removed."""

    address: str
    reason: str  # the store's error, with the path

    @property
    def message(self) -> str:
        """For remote users (portal, API): no server paths, those are in the log."""
        return (
            f"mailbox {self.address} was deleted, but its message files could not be removed "
            "from the server's disk; the server log names the path"
        )

    @property
    def detail(self) -> str:
        """For the administrator on the server (CLI): with the path and the reason."""
        return f"mailbox {self.address} was deleted, but {self.reason}"


def remove_maildirs(*, store: MaildirStore, refs: Sequence[MailboxRef]) -> list[LeftoverMaildir]:
    """Remove the Maildirs of deleted mailboxes; call it only after the deletion committed.

    Returns the Maildirs that could not be removed (each also logged with its path); an
    empty list when every file went. Never raises for a file that stays.
    """
    leftovers: list[LeftoverMaildir] = []
    for ref in refs:
        try:
            store.remove_mailbox(ref)
        except (MaildirError, OSError) as exc:
            address = f"{ref.local_part}@{ref.domain}"
            log.error("mailbox %s deleted, but its Maildir was not removed: %s", address, exc)
            leftovers.append(LeftoverMaildir(address=address, reason=str(exc)))
    return leftovers
