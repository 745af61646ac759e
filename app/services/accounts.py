"""Operators, API tokens and logins (mailbox and operator); throttling is in throttle.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session

from app.errors import (
    ConflictError,
    NotFoundError,
    TemporaryError,
    ValidationError,
)
from app.models import (
    CUSTOMER_SCOPES,
    ROLE_ADMIN,
    ROLE_SUPPORT,
    SCOPE_QUEUE,
    SCOPES,
    STATUS_ACTIVE,
    ApiToken,
    Mailbox,
    Operator,
    utcnow,
)
from app.passwords import dummy_verify, hash_password, verify_password
from app.services import customer_admins
from app.services.audit import SYSTEM_ACTOR, Actor, audit
from app.services.common import flush_or_conflict
from app.services.customer_admins import clean_username
from app.services.customers import get_customer
from app.services.mailboxes import check_password, find_mailbox, generate_password
from app.services.sessions import end_sessions
from app.services.tenancy import customer_scope, isp_only, visible

ROLES = (ROLE_ADMIN, ROLE_SUPPORT)
TOKEN_PREFIX = "mh_"  # noqa: S105 - a label, not a secret
# last_used_at is a hint for operators, not an access log: write it at most once a minute so a
# busy API client does not turn every read into a write.
_LAST_USED_GRANULARITY = dt.timedelta(minutes=1)
_TOKEN = re.compile(r"^mh_([A-Za-z0-9]{12})_([A-Za-z0-9_-]{20,128})$")


# ------------------------------------------------------------------------------ operators
@isp_only("manage operators")
def create_operator(
    session: Session, *, actor: Actor, username: str, password: str, role: str = "admin"
) -> Operator:
    """username: 1-64 of [a-z0-9._-] (lower-cased); role admin|support; password >= 8."""
    clean = clean_username(username)
    if role not in ROLES:
        raise ValidationError(f"role must be admin or support, not {role!r}", field="role")
    check_password(password)
    if session.scalar(select(Operator.id).where(Operator.username == clean)) is not None:
        raise ConflictError(f"operator {clean!r} already exists", field="username")
    if customer_admins.username_taken(session, clean):
        raise ConflictError(
            f"user name {clean!r} is taken by a customer administrator", field="username"
        )
    operator = Operator(
        username=clean, password_hash=hash_password(password), role=role, active=True
    )
    session.add(operator)
    flush_or_conflict(session, f"operator {clean!r} already exists", field="username")
    audit(
        session,
        actor=actor,
        action="operator.create",
        object_type="operator",
        object_id=operator.id,
        object_name=clean,
        detail=f"role={role}",
    )
    return operator


def get_operator_by_username(session: Session, *, username: str) -> Operator:
    operator = session.scalar(select(Operator).where(Operator.username == username.strip().lower()))
    if operator is None:
        raise NotFoundError(f"no operator {username.strip().lower()!r}", field="username")
    return operator


@isp_only("see operators")
def list_operators(session: Session, *, actor: Actor | None = None) -> list[Operator]:
    return list(session.scalars(select(Operator).order_by(Operator.id)))


def _get_operator(session: Session, operator_id: int) -> Operator:
    operator = session.get(Operator, operator_id)
    if operator is None:
        raise NotFoundError(f"no operator with id {operator_id}", field="operator_id")
    return operator


@isp_only("manage operators")
def set_operator_password(
    session: Session, *, actor: Actor, operator_id: int, password: str
) -> Operator:
    operator = _get_operator(session, operator_id)
    check_password(password)
    operator.password_hash = hash_password(password)
    _end_portal_sessions(session, operator_id=operator.id)
    session.flush()
    audit(
        session,
        actor=actor,
        action="operator.password",
        object_type="operator",
        object_id=operator.id,
        object_name=operator.username,
    )
    return operator


def _end_portal_sessions(session: Session, *, operator_id: int) -> None:
    # A new password logs the operator out everywhere, whichever door set it (portal, CLI):
    # a session that may have leaked must not outlive the password it was opened with.
    end_sessions(session, operator_id=operator_id)


def change_own_password(
    session: Session,
    *,
    actor: Actor,
    operator_id: int,
    current_password: str,
    new_password: str,
) -> Operator:
    """An operator replacing their own password: ``current_password`` must verify (else
    ValidationError on field 'current_password'), ``new_password`` follows the same rules as
    everywhere (field 'new_password'). Every login session of the operator ends here
    (``sessions.end_sessions``), so the edge opens a fresh one for the browser that made the
    change (it owns the cookie)."""
    operator = _get_operator(session, operator_id)
    ok, _ = verify_password(current_password, operator.password_hash)
    if not ok:
        raise ValidationError("this is not your current password", field="current_password")
    check_password(new_password, field="new_password")
    operator.password_hash = hash_password(new_password)
    _end_portal_sessions(session, operator_id=operator.id)
    session.flush()
    audit(
        session,
        actor=actor,
        action="operator.password",
        object_type="operator",
        object_id=operator.id,
        object_name=operator.username,
        detail="changed own password",
    )
    return operator


@isp_only("manage operators")
def delete_operator(session: Session, *, actor: Actor, operator_id: int) -> None:
    """Refused (ConflictError) for the last active admin."""
    operator = _get_operator(session, operator_id)
    if operator.role == ROLE_ADMIN and operator.active:
        other_admins = session.scalar(
            select(func.count(Operator.id)).where(
                Operator.role == ROLE_ADMIN, Operator.active.is_(True), Operator.id != operator.id
            )
        )
        if not other_admins:
            raise ConflictError(
                f"{operator.username!r} is the last active admin and cannot be deleted",
                field="operator_id",
            )
    audit(
        session,
        actor=actor,
        action="operator.delete",
        object_type="operator",
        object_id=operator.id,
        object_name=operator.username,
    )
    session.delete(operator)
    session.flush()


def ensure_first_operator(session: Session) -> tuple[Operator, str] | None:
    """If there is no operator at all, create 'admin' with a generated password and return
    (operator, password) so ``mailhost serve`` can print it once; otherwise None."""
    if session.scalar(select(Operator.id).limit(1)) is not None:
        return None
    password = generate_password()
    operator = create_operator(
        session, actor=SYSTEM_ACTOR, username="admin", password=password, role=ROLE_ADMIN
    )
    return operator, password


# ------------------------------------------------------------------------------ API tokens
def _token_digest(secret_token: str) -> str:
    return hashlib.sha256(secret_token.encode("utf-8")).hexdigest()


def create_token(
    session: Session,
    *,
    actor: Actor,
    name: str,
    scopes: Sequence[str],
    owner: str | None = None,
    customer_id: int | None = None,
) -> tuple[ApiToken, str]:
    """Returns (row, plaintext token 'mh_<prefix>_<secret>'); only a SHA-256 is stored.
    Unknown scopes raise ValidationError.

    ``customer_id`` binds the token to that customer: it then sees and changes only that
    customer's objects (its actor carries the customer, app/services/tenancy.py) and is
    refused ISP-only routes. A customer administrator may create tokens for its own customer
    only (another customer is "not found"); it cannot create an ISP token, and a customer's
    token can never hold the ``queue`` scope (the queue holds every customer's mail)."""
    if actor.customer_id is not None:
        customer_id = customer_scope(actor, customer_id)
    if customer_id is not None:
        customer = get_customer(session, customer_id=customer_id, actor=actor)
        customer_id = customer.id
    clean_name = " ".join(name.split())
    if not clean_name or len(clean_name) > 100:
        raise ValidationError("token name must be 1-100 characters", field="name")
    if isinstance(scopes, str):
        scopes = scopes.split()
    wanted: list[str] = []
    for scope in scopes:
        if scope not in SCOPES:
            raise ValidationError(
                f"unknown scope {scope!r} (known: {', '.join(SCOPES)})", field="scopes"
            )
        if scope not in wanted:
            wanted.append(scope)
    if not wanted:
        raise ValidationError("a token needs at least one scope", field="scopes")
    if customer_id is not None and SCOPE_QUEUE in wanted:
        raise ValidationError(
            f"a customer's token cannot have the {SCOPE_QUEUE!r} scope (known for customers: "
            f"{', '.join(CUSTOMER_SCOPES)})",
            field="scopes",
        )
    token_owner = (owner or actor.name)[:100]
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    # 12 random characters of prefix (71 bits) make a clash practically impossible; the 256-bit
    # secret is what authenticates.
    prefix = "".join(secrets.choice(alphabet) for _ in range(12))
    plaintext = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    token = ApiToken(
        name=clean_name,
        prefix=prefix,
        token_hash=_token_digest(plaintext),
        scopes=" ".join(wanted),
        owner=token_owner,
        customer_id=customer_id,
    )
    session.add(token)
    session.flush()
    audit(
        session,
        actor=actor,
        action="token.create",
        object_type="token",
        object_id=token.id,
        object_name=clean_name,
        detail=f"scopes={token.scopes} prefix={prefix}"
        + (f" customer={customer_id}" if customer_id is not None else ""),
    )
    return token, plaintext


def list_tokens(
    session: Session, *, actor: Actor | None = None, customer_id: int | None = None
) -> list[ApiToken]:
    """Every token (ISP staff), or one customer's: a customer administrator always gets
    its own customer's tokens only."""
    query = select(ApiToken)
    scope = customer_scope(actor, customer_id)
    if scope is not None:
        query = query.where(ApiToken.customer_id == scope)
    return list(session.scalars(query.order_by(ApiToken.id)))


def revoke_token(session: Session, *, actor: Actor, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None or not visible(actor, token.customer_id or 0):
        # An ISP token (no customer) is invisible to a customer administrator too.
        raise NotFoundError(f"no token with id {token_id}", field="token_id")
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        session.flush()
        audit(
            session,
            actor=actor,
            action="token.revoke",
            object_type="token",
            object_id=token.id,
            object_name=token.name,
        )
    return token


def verify_token(session: Session, *, token: str) -> ApiToken | None:
    """The active token matching ``token`` (constant-time compare), last_used_at updated
    (at most once a minute); None for unknown, malformed or revoked tokens."""
    match = _TOKEN.match(token.strip())
    if not match:
        return None
    row = session.scalar(select(ApiToken).where(ApiToken.prefix == match.group(1)))
    # Compare digests in constant time even when the prefix is unknown, so response time
    # does not tell which prefixes exist.
    expected = row.token_hash if row is not None else "0" * 64
    if not hmac.compare_digest(expected, _token_digest(token.strip())) or row is None:
        return None
    if row.revoked_at is not None:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= _LAST_USED_GRANULARITY:
        row.last_used_at = now
        session.flush()
    return row


# ------------------------------------------------------------------------------ logins
DOOR_POP3 = "pop3"
DOOR_SUBMISSION = "submission"


def authenticate_mailbox(
    session: Session,
    *,
    address: str,
    password: str,
    now: dt.datetime | None = None,
    door: str = DOOR_POP3,
) -> Mailbox | None:
    """The mailbox if address/password match AND mailbox, domain and customer are active AND
    the mailbox may use ``door`` (POP3: ``pop3_enabled``; submission: ``may_send``); else
    None. Each door checks only its own switch: POP3 off does not stop sending, nor the
    reverse. Same time spent for unknown users (dummy verify). Re-hashes deprecated hashes
    on success and records last_login_at. Raises TemporaryError only for server-side
    failures."""
    if door not in (DOOR_POP3, DOOR_SUBMISSION):
        raise ValueError(f"unknown door {door!r}")
    try:
        try:
            mailbox = find_mailbox(session, address=address)
        except ValidationError:
            mailbox = None
        if mailbox is None:
            dummy_verify(password)
            return None
        ok, new_hash = verify_password(password, mailbox.password_hash)
        if not ok:
            return None
        # Checked after the password so a wrong password and a suspended account look alike
        # to a guesser, and both cost one verification.
        domain = mailbox.domain
        if (
            mailbox.status != STATUS_ACTIVE
            or domain.status != STATUS_ACTIVE
            or domain.customer.status != STATUS_ACTIVE
            or not (mailbox.pop3_enabled if door == DOOR_POP3 else mailbox.may_send)
        ):
            return None
        if new_hash is not None:
            mailbox.password_hash = new_hash
        mailbox.last_login_at = now or utcnow()
        session.flush()
        return mailbox
    except (OperationalError, PoolTimeoutError) as exc:
        raise TemporaryError("the account database is unavailable, try again later") from exc


def authenticate_operator(session: Session, *, username: str, password: str) -> Operator | None:
    """Like authenticate_mailbox, for active operators; records last_login_at."""
    try:
        operator = session.scalar(
            select(Operator).where(Operator.username == username.strip().lower())
        )
        if operator is None:
            dummy_verify(password)
            return None
        ok, new_hash = verify_password(password, operator.password_hash)
        if not ok or not operator.active:
            return None
        if new_hash is not None:
            operator.password_hash = new_hash
        operator.last_login_at = utcnow()
        session.flush()
        return operator
    except (OperationalError, PoolTimeoutError) as exc:
        raise TemporaryError("the account database is unavailable, try again later") from exc
