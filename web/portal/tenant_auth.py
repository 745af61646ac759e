"""The logged-in customer administrator of a request, and the CSRF check of their forms."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.models import CustomerAdmin, TenantSession, WebSession, utcnow
from app.services import customer_admins
from app.services.audit import Actor
from app.services.sessions import hash_session_id
from web.deps import SessionDep, client_ip
from web.portal.auth import CSRF_REFUSED, SESSION_COOKIE, enrolment_gate
from web.portal.errors import LoginRequired, PortalError
from web.portal.forms import PostForm

ROLE_LABEL = "customer admin"


@dataclass(frozen=True)
class TenantMe:
    """Plain copy for templates (``me``): name, role label and the customer shown."""

    id: int
    username: str
    role: str
    customer_id: int
    customer_name: str


@dataclass
class TenantAuth:
    admin: CustomerAdmin
    web_session: TenantSession
    remote_addr: str | None
    me: TenantMe
    csrf_token: str
    is_admin: bool = False  # the operator portal's admin role: never

    @property
    def actor(self) -> Actor:
        return customer_admins.actor_of(self.admin, self.remote_addr)

    @property
    def customer_id(self) -> int:
        return self.admin.customer_id


def _operator_session(session: Session, raw: str) -> bool:
    row = session.get(WebSession, hash_session_id(raw))
    return row is not None and row.expires_at > utcnow()


def current_tenant(request: Request, session: SessionDep) -> TenantAuth:
    """The customer administrator behind the session cookie. /my pages belong to customer
    administrators only: an operator gets 404, nobody logged in the login page."""
    raw = request.cookies.get(SESSION_COOKIE)
    row = customer_admins.find_tenant_session(session, raw=raw) if raw else None
    if row is None:
        if raw and _operator_session(session, raw):
            # An operator: the customer pages do not exist for them (as the ISP's pages do
            # not for a customer administrator).
            raise PortalError(404, "Not found", "There is no page at this address.")
        raise LoginRequired(request.url.path if request.method == "GET" else "/my")
    admin = session.get(CustomerAdmin, row.customer_admin_id)
    assert admin is not None  # find_tenant_session checked it
    enrolment_gate(request, session, admin)
    auth = TenantAuth(
        admin,
        row,
        client_ip(request),
        TenantMe(admin.id, admin.username, ROLE_LABEL, admin.customer_id, admin.customer.name),
        row.csrf_token,
    )
    request.state.auth = auth
    return auth


TenantDep = Annotated[TenantAuth, Depends(current_tenant)]


async def tenant_form(request: Request, auth: TenantDep) -> PostForm:
    data = await request.form()
    token = data.get("csrf_token")
    if not isinstance(token, str) or not hmac.compare_digest(
        token.encode(), auth.csrf_token.encode()
    ):
        raise CSRF_REFUSED
    return PostForm(data)


TenantFormDep = Annotated[PostForm, Depends(tenant_form)]
