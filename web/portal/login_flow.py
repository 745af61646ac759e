"""The login steps after the password: which account it was, and the second factor.

One form at ``/login`` serves operators and customer administrators (user names share one
namespace): a name is tried as an operator first, then as a customer administrator, so a
customer's staff need no second address to remember. When the account has two-factor login
on, a verified password opens no session: it leaves a ``LoginChallenge`` (hash of a
five-minute cookie) and the browser goes to ``/login/totp``, where a current TOTP code or a
recovery code opens the session. Code guesses reserve an attempt with
``app.services.throttle`` under their own account key (``2fa:<name>``), so a right password
never gives a guesser a fresh budget of codes.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.models import (
    ROLE_ADMIN,
    CustomerAdmin,
    LoginChallenge,
    Operator,
    TenantSession,
    WebSession,
    utcnow,
)
from app.services import accounts, customer_admins, throttle, totp
from app.services.audit import Actor, audit
from app.services.sessions import hash_session_id, open_session

CHALLENGE_COOKIE = "mh_2fa"
CHALLENGE_SECONDS = 300


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a verified step leads to: a session cookie, or a challenge cookie, or nothing."""

    session_cookie: str | None = None
    challenge_cookie: str | None = None


def owner_of(account: Operator | CustomerAdmin) -> totp.Owner:
    kind = "operator" if isinstance(account, Operator) else "customer_admin"
    return totp.Owner(kind, account.id, account.username)


def _rotate(session: Session, old_cookie: str | None) -> None:
    # Whatever session the browser had before is gone (no fixation), of either kind.
    if old_cookie:
        digest = hash_session_id(old_cookie)
        session.execute(delete(WebSession).where(WebSession.id_hash == digest))
        session.execute(delete(TenantSession).where(TenantSession.id_hash == digest))


def open_for(
    session: Session,
    account: Operator | CustomerAdmin,
    *,
    remote_addr: str | None,
    old_cookie: str | None,
    max_age: int,
    detail: str | None = None,
) -> str:
    _rotate(session, old_cookie)
    if isinstance(account, Operator):
        raw = open_session(
            session, operator_id=account.id, remote_addr=remote_addr, max_age=max_age
        )
        actor = Actor("operator", account.username, remote_addr)
        kind = "operator"
    else:
        raw = customer_admins.open_tenant_session(
            session, admin_id=account.id, remote_addr=remote_addr, max_age=max_age
        )
        actor = customer_admins.actor_of(account, remote_addr)
        kind = "customer_admin"
    audit(
        session,
        actor=actor,
        action="login",
        object_type=kind,
        object_id=account.id,
        object_name=account.username,
        detail=detail,
    )
    return raw


def password_step(
    factory: sessionmaker[Session],
    *,
    username: str,
    password: str,
    ticket: throttle.Ticket,
    policy: throttle.ThrottlePolicy,
    remote_addr: str | None,
    old_cookie: str | None,
    max_age: int,
    next_url: str,
) -> Outcome:
    """Check the password (operator, then customer administrator); open a session, or a
    challenge when two-factor login is on."""
    with transaction(factory) as session:
        account: Operator | CustomerAdmin | None = accounts.authenticate_operator(
            session, username=username, password=password
        )
        if account is None:
            account = customer_admins.authenticate_customer_admin(
                session, username=username, password=password
            )
        if account is None:
            return Outcome()  # the reserved attempt stays charged: it is the failure
        throttle.settle(session, ticket=ticket, outcome=throttle.Outcome.SUCCESS, policy=policy)
        if totp.is_enrolled(session, owner=owner_of(account)):
            now = utcnow()
            session.execute(delete(LoginChallenge).where(LoginChallenge.expires_at < now))
            raw = secrets.token_urlsafe(32)
            session.add(
                LoginChallenge(
                    id_hash=hash_session_id(raw),
                    operator_id=account.id if isinstance(account, Operator) else None,
                    customer_admin_id=account.id if isinstance(account, CustomerAdmin) else None,
                    next_url=next_url,
                    created_at=now,
                    expires_at=now + dt.timedelta(seconds=CHALLENGE_SECONDS),
                )
            )
            return Outcome(challenge_cookie=raw)
        return Outcome(
            session_cookie=open_for(
                session, account, remote_addr=remote_addr, old_cookie=old_cookie, max_age=max_age
            )
        )


def needs_enrolment(session: Session, settings: object, account: Operator | CustomerAdmin) -> bool:
    """Does the operator setting require two-factor login of this account, still missing?"""
    if not getattr(settings, "totp_required_for_admins", False):
        return False
    if isinstance(account, Operator) and account.role != ROLE_ADMIN:
        return False
    return not totp.is_enrolled(session, owner=owner_of(account))
