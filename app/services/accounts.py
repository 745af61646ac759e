"""Operators, API tokens and logins (mailbox and operator), with failed-login throttling."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy.orm import Session

from app.models import ApiToken, Mailbox, Operator
from app.services.audit import Actor


def create_operator(
    session: Session, *, actor: Actor, username: str, password: str, role: str = "admin"
) -> Operator:
    """username: 1-64 of [a-z0-9._-] (lower-cased); role admin|support; password >= 8."""
    raise NotImplementedError


def get_operator_by_username(session: Session, *, username: str) -> Operator:
    raise NotImplementedError


def list_operators(session: Session) -> list[Operator]:
    raise NotImplementedError


def set_operator_password(
    session: Session, *, actor: Actor, operator_id: int, password: str
) -> Operator:
    raise NotImplementedError


def delete_operator(session: Session, *, actor: Actor, operator_id: int) -> None:
    """Refused (ConflictError) for the last active admin."""
    raise NotImplementedError


def ensure_first_operator(session: Session) -> tuple[Operator, str] | None:
    """If there is no operator at all, create 'admin' with a generated password and return
    (operator, password) so ``mailhost serve`` can print it once; otherwise None."""
    raise NotImplementedError


def create_token(
    session: Session, *, actor: Actor, name: str, scopes: Sequence[str], owner: str | None = None
) -> tuple[ApiToken, str]:
    """Returns (row, plaintext token 'mh_<prefix>_<secret>'); only a SHA-256 is stored.
    Unknown scopes raise ValidationError."""
    raise NotImplementedError


def list_tokens(session: Session) -> list[ApiToken]:
    raise NotImplementedError


def revoke_token(session: Session, *, actor: Actor, token_id: int) -> ApiToken:
    raise NotImplementedError


def verify_token(session: Session, *, token: str) -> ApiToken | None:
    """The active token matching ``token`` (constant-time compare), last_used_at updated
    (at most once a minute); None for unknown, malformed or revoked tokens."""
    raise NotImplementedError


def authenticate_mailbox(
    session: Session, *, address: str, password: str, now: dt.datetime | None = None
) -> Mailbox | None:
    """The mailbox if address/password match AND mailbox, domain and customer are active AND
    POP3 is enabled; else None. Same time spent for unknown users (dummy verify). Re-hashes
    deprecated hashes on success and records last_login_at. Raises TemporaryError only for
    server-side failures."""
    raise NotImplementedError


def authenticate_operator(session: Session, *, username: str, password: str) -> Operator | None:
    """Like authenticate_mailbox, for active operators; records last_login_at."""
    raise NotImplementedError


def throttle_delay(
    session: Session, *, keys: Sequence[str], now: dt.datetime | None = None
) -> float:
    """Seconds to wait before answering a login attempt for these keys (e.g. 'pop3:ip:1.2.3.4',
    'pop3:user:a@b.example'): 0 for no recent failures, doubling per failure from 1s, capped at
    30s; failures older than 15 minutes are forgotten, so real users are never locked out
    for long."""
    raise NotImplementedError


def record_login_failure(session: Session, *, keys: Sequence[str]) -> None:
    raise NotImplementedError


def clear_login_failures(session: Session, *, keys: Sequence[str]) -> None:
    raise NotImplementedError
