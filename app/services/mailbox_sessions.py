"""Mailbox users' self-service sessions (/me): login check, open, look up, end.

Separate from the operator sessions (``app.services.sessions``) on purpose: another table,
another cookie, so a mailbox user's session can never be taken for an operator's, and the
other way round. The cookie holds 32 random bytes; the table stores only their SHA-256.
"""

from __future__ import annotations

import datetime as dt
import secrets

from sqlalchemy import delete
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from app.errors import TemporaryError, ValidationError
from app.models import STATUS_ACTIVE, Mailbox, MailboxSession, utcnow
from app.passwords import dummy_verify, verify_password
from app.services.mailboxes import find_mailbox
from app.services.sessions import hash_session_id


def authenticate_user(session: Session, *, address: str, password: str) -> Mailbox | None:
    """The mailbox when address and password match and mailbox, domain and customer are
    active (POP3 may be off: the self-service area is not a mail door). The same time is
    spent for unknown addresses (a dummy verification), and a wrong password looks like a
    suspended account."""
    try:
        try:
            mailbox = find_mailbox(session, address=address)
        except ValidationError:
            mailbox = None
        if mailbox is None:
            dummy_verify(password)
            return None
        ok, new_hash = verify_password(password, mailbox.password_hash)
        domain = mailbox.domain
        if not ok or mailbox.status != STATUS_ACTIVE:
            return None
        if domain.status != STATUS_ACTIVE or domain.customer.status != STATUS_ACTIVE:
            return None
        if new_hash is not None:
            mailbox.password_hash = new_hash
            session.flush()
        return mailbox
    except (OperationalError, PoolTimeoutError) as exc:
        raise TemporaryError("the account database is unavailable, try again later") from exc


def open_user_session(session: Session, *, mailbox_id: int, max_age: int) -> str:
    """A new session (fresh id and CSRF token); returns the cookie value. Expired rows go."""
    now = utcnow()
    session.execute(delete(MailboxSession).where(MailboxSession.expires_at < now))
    raw = secrets.token_urlsafe(32)
    session.add(
        MailboxSession(
            id_hash=hash_session_id(raw),
            mailbox_id=mailbox_id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + dt.timedelta(seconds=max_age),
        )
    )
    session.flush()
    return raw


def find_user_session(session: Session, *, raw: str) -> tuple[MailboxSession, Mailbox] | None:
    """The live session behind a cookie value and its (still active) mailbox, or None."""
    row = session.get(MailboxSession, hash_session_id(raw))
    if row is None or row.expires_at <= utcnow():
        return None
    mailbox = session.get(Mailbox, row.mailbox_id)
    if mailbox is None or mailbox.status != STATUS_ACTIVE:
        return None
    return row, mailbox


def end_user_session(session: Session, *, raw: str) -> None:
    session.execute(delete(MailboxSession).where(MailboxSession.id_hash == hash_session_id(raw)))


def end_user_sessions(session: Session, *, mailbox_id: int, keep: str | None = None) -> None:
    """Every session of the mailbox but ``keep`` (a cookie value): after a password change."""
    query = delete(MailboxSession).where(MailboxSession.mailbox_id == mailbox_id)
    if keep is not None:
        query = query.where(MailboxSession.id_hash != hash_session_id(keep))
    session.execute(query, execution_options={"synchronize_session": "fetch"})
