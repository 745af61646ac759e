"""Small helpers shared by the portal's page modules: redirects, paging, message cleanup."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Protocol, TypeVar

from fastapi.responses import RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import ValidationError
from app.models import Domain, Mailbox
from app.services.removal import LeftoverMaildir

PAGE_SIZE = 50

# Texts for ``?done=`` after a redirect (POST/redirect/GET); unknown keys show nothing.
DONE_MESSAGES = {
    "created": "Created.",
    "saved": "Saved.",
    "deleted": "Deleted.",
    "suspended": "Suspended.",
    "active": "Resumed: active again.",
    "password": "Password changed.",
    "own_password": "Your password was changed. Your other sessions (other browsers and "
    "machines) were logged out; this one continues.",
    "revoked": "Revoked.",
    "imported": "Import complete.",
    "cleared": "The sending limited flag is cleared.",
    "queue_retry": "Queued and deferred recipients are due now; a delivery worker takes them "
    "on its next round.",
    "queue_hold": "Held: no delivery until released.",
    "queue_release": "Released: the held recipients are due now.",
    "deleted_files_left": "Deleted, but the message files of some deleted mailboxes could not "
    "be removed from the server's disk. The server log names their paths.",
}
# ``?done=`` keys shown as a warning: the action happened, but something needs a look.
DONE_WARNINGS = frozenset({"deleted_files_left"})


def done_after_delete(leftovers: Sequence[LeftoverMaildir]) -> str:
    """The ``?done=`` key after a deletion: plain, or the warning about files left on disk."""
    return "deleted_files_left" if leftovers else "deleted"


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


class _HasId(Protocol):
    @property
    def id(self) -> int: ...


Row = TypeVar("Row", bound=_HasId)


def split_page(rows: Sequence[Row], limit: int = PAGE_SIZE) -> tuple[list[Row], int | None]:
    """Rows fetched with ``limit + 1``: (the page, the id of its last row when there is a next
    page, else None). That id is where the next page's keyset query continues."""
    page = list(rows[:limit])
    return page, page[-1].id if len(rows) > limit else None


def parse_decimal(text: str, *, field_name: str) -> Decimal:
    try:
        value = Decimal(text.strip() or "0")
    except InvalidOperation:
        raise ValidationError("enter a number such as 2.50", field=field_name) from None
    if not value.is_finite():
        raise ValidationError("enter a number such as 2.50", field=field_name)
    return value


def preload_domains(session: Session, items: Sequence[Mailbox]) -> None:
    """Load the domains of a page of mailboxes in one query (no N+1 lazy loads)."""
    ids = {m.domain_id for m in items}
    if ids:
        session.scalars(select(Domain).where(Domain.id.in_(ids))).all()
