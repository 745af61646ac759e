"""Customer administrators: create, list, change, delete, log in, and their login sessions.

A customer administrator belongs to exactly one customer and is created by ISP staff (portal,
CLI, API) or by another administrator of the same customer; the lookups go through
``tenancy.check_visible`` like every other. User names share one namespace with operators,
because one login form serves both (a name is looked up as an operator first).
"""

from __future__ import annotations

import datetime as dt
import re
import secrets

from sqlalchemy import delete, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, joinedload

from app.errors import ConflictError, NotFoundError, TemporaryError, ValidationError
from app.models import STATUS_ACTIVE, CustomerAdmin, Operator, TenantSession, utcnow
from app.passwords import dummy_verify, hash_password, verify_password
from app.services.audit import Actor, audit
from app.services.common import flush_or_conflict
from app.services.customers import get_customer
from app.services.mailboxes import check_password
from app.services.sessions import hash_session_id
from app.services.tenancy import ACTOR_CUSTOMER_ADMIN, check_visible

_USERNAME = re.compile(r"^[a-z0-9._-]{1,64}$")


def clean_username(username: str) -> str:
    """Operators' and customer administrators' user names: 1-64 of [a-z0-9._-], lower-cased."""
    clean = username.strip().lower()
    if not _USERNAME.match(clean):
        raise ValidationError(
            "username must be 1-64 characters of a-z, 0-9, '.', '_' and '-'", field="username"
        )
    return clean


def actor_of(admin: CustomerAdmin, remote_addr: str | None) -> Actor:
    """The actor a customer administrator's requests carry (audited under this identity)."""
    return Actor(ACTOR_CUSTOMER_ADMIN, admin.username, remote_addr, customer_id=admin.customer_id)


def username_taken(session: Session, username: str) -> bool:
    """Is ``username`` (already clean) an operator or a customer administrator?"""
    return (
        session.scalar(select(Operator.id).where(Operator.username == username)) is not None
        or session.scalar(select(CustomerAdmin.id).where(CustomerAdmin.username == username))
        is not None
    )


def create_customer_admin(
    session: Session, *, actor: Actor, customer_id: int, username: str, password: str
) -> CustomerAdmin:
    """username as for operators (1-64 of [a-z0-9._-], lower-cased), unique among operators
    and customer administrators (ConflictError); password >= 8 characters."""
    customer = get_customer(session, customer_id=customer_id, actor=actor)
    clean = clean_username(username)
    check_password(password)
    if username_taken(session, clean):
        raise ConflictError(f"user name {clean!r} is already taken", field="username")
    admin = CustomerAdmin(
        customer_id=customer.id, username=clean, password_hash=hash_password(password)
    )
    session.add(admin)
    flush_or_conflict(session, f"user name {clean!r} is already taken", field="username")
    audit(
        session,
        actor=actor,
        action="customer_admin.create",
        object_type="customer_admin",
        object_id=admin.id,
        object_name=clean,
        detail=f"customer={customer.id}",
    )
    return admin


def list_customer_admins(
    session: Session, *, actor: Actor | None, customer_id: int | None = None
) -> list[CustomerAdmin]:
    """One customer's administrators (a customer admin always sees only their own)."""
    if actor is not None and actor.customer_id is not None:
        if customer_id is not None and customer_id != actor.customer_id:
            raise NotFoundError(f"no customer with id {customer_id}", field="customer_id")
        customer_id = actor.customer_id
    query = select(CustomerAdmin).options(joinedload(CustomerAdmin.customer))
    if customer_id is not None:
        query = query.where(CustomerAdmin.customer_id == customer_id)
    return list(session.scalars(query.order_by(CustomerAdmin.id)))


def get_customer_admin(
    session: Session, *, admin_id: int, actor: Actor | None = None
) -> CustomerAdmin:
    admin = session.get(CustomerAdmin, admin_id)
    message = f"no customer administrator with id {admin_id}"
    if admin is None:
        raise NotFoundError(message, field="admin_id")
    check_visible(actor, admin.customer_id, message=message, field="admin_id")
    return admin


def get_customer_admin_by_username(
    session: Session, *, username: str, actor: Actor | None = None
) -> CustomerAdmin:
    clean = username.strip().lower()
    admin = session.scalar(select(CustomerAdmin).where(CustomerAdmin.username == clean))
    message = f"no customer administrator {clean!r}"
    if admin is None:
        raise NotFoundError(message, field="username")
    check_visible(actor, admin.customer_id, message=message, field="username")
    return admin


def set_customer_admin_password(
    session: Session, *, actor: Actor, admin_id: int, password: str
) -> CustomerAdmin:
    """A new password; every login session of the administrator ends."""
    admin = get_customer_admin(session, admin_id=admin_id, actor=actor)
    check_password(password)
    admin.password_hash = hash_password(password)
    end_tenant_sessions(session, admin_id=admin.id)
    session.flush()
    audit(
        session,
        actor=actor,
        action="customer_admin.password",
        object_type="customer_admin",
        object_id=admin.id,
        object_name=admin.username,
    )
    return admin


def delete_customer_admin(session: Session, *, actor: Actor, admin_id: int) -> None:
    """Delete an administrator (their sessions and TOTP credential go with the row). An
    administrator cannot delete themselves: the last one would lock the customer out."""
    admin = get_customer_admin(session, admin_id=admin_id, actor=actor)
    if actor.kind == ACTOR_CUSTOMER_ADMIN and actor.name == admin.username:
        raise ValidationError("you cannot delete your own account", field="admin_id")
    audit(
        session,
        actor=actor,
        action="customer_admin.delete",
        object_type="customer_admin",
        object_id=admin.id,
        object_name=admin.username,
    )
    session.delete(admin)
    session.flush()


def count_customer_admins(session: Session, *, customer_id: int) -> int:
    query = select(func.count(CustomerAdmin.id)).where(CustomerAdmin.customer_id == customer_id)
    return int(session.scalar(query) or 0)


def authenticate_customer_admin(
    session: Session, *, username: str, password: str
) -> CustomerAdmin | None:
    """The administrator if the password matches and both the account and its customer are
    active; else None (same time spent for unknown names). Records last_login_at."""
    try:
        admin = session.scalar(
            select(CustomerAdmin)
            .where(CustomerAdmin.username == username.strip().lower())
            .options(joinedload(CustomerAdmin.customer))
        )
        if admin is None:
            dummy_verify(password)
            return None
        ok, new_hash = verify_password(password, admin.password_hash)
        if not ok or not admin.active or admin.customer.status != STATUS_ACTIVE:
            return None
        if new_hash is not None:
            admin.password_hash = new_hash
        admin.last_login_at = utcnow()
        session.flush()
        return admin
    except (OperationalError, PoolTimeoutError) as exc:
        raise TemporaryError("the account database is unavailable, try again later") from exc


# ------------------------------------------------------------------------------ sessions
def open_tenant_session(
    session: Session, *, admin_id: int, remote_addr: str | None, max_age: int
) -> str:
    """A new login session (fresh id and CSRF token); the cookie value. Expired rows go."""
    now = utcnow()
    session.execute(delete(TenantSession).where(TenantSession.expires_at < now))
    raw = secrets.token_urlsafe(32)
    session.add(
        TenantSession(
            id_hash=hash_session_id(raw),
            customer_admin_id=admin_id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + dt.timedelta(seconds=max_age),
            remote_addr=remote_addr,
        )
    )
    session.flush()
    return raw


def find_tenant_session(session: Session, *, raw: str) -> TenantSession | None:
    """The live session behind cookie value ``raw`` whose administrator and customer are
    still active, or None."""
    row = session.get(TenantSession, hash_session_id(raw))
    if row is None or row.expires_at <= utcnow():
        return None
    admin = session.get(CustomerAdmin, row.customer_admin_id)
    if admin is None or not admin.active or admin.customer.status != STATUS_ACTIVE:
        return None
    return row


def end_tenant_sessions(session: Session, *, admin_id: int) -> int:
    result = session.execute(
        delete(TenantSession).where(TenantSession.customer_admin_id == admin_id),
        execution_options={"synchronize_session": "fetch"},
    )
    return int(getattr(result, "rowcount", 0) or 0)
