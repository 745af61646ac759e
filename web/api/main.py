"""Every router of the API in one place (mounted under /api/v1 by ``install_api``)."""

from __future__ import annotations

from fastapi import APIRouter

from web.api import billing
from web.api.routes import (
    aliases,
    customer_admins,  # issue 15
    customers,
    dkim,
    domains,
    mailboxes,
    messages,
    queue,
    relay,
    scanning,
    selfservice,
    sending,
)

api_router = APIRouter()
for module in (
    customers,
    domains,
    mailboxes,
    aliases,
    dkim,
    sending,
    queue,
    relay,
    scanning,
    messages,
    selfservice,
):
    api_router.include_router(module.router)
api_router.include_router(billing.router)
api_router.include_router(customer_admins.router)
