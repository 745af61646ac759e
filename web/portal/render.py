"""Jinja2 templates, display filters, and the one function routes use to render a page."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from app.services.addresses import domain_to_unicode
from web.portal.common import DONE_MESSAGES, DONE_WARNINGS

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"

templates = Jinja2Templates(directory=str(TEMPLATES_DIR))


def human_bytes(value: int | None) -> str:
    """1536 -> '1.5 KiB' (binary units, like quotas are entered)."""
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{value} B"  # pragma: no cover - loop always returns


def format_time(value: dt.datetime | None) -> str:
    if value is None:
        return "never"
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def unicode_address(address: str | None) -> str:
    """Show the domain part of an IDNA address in Unicode."""
    if not address or "@" not in address:
        return address or ""
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain_to_unicode(domain)}"


def percent(used: int, total: int | None) -> int:
    if not total:
        return 0
    return min(100, round(100 * used / total))


templates.env.filters["bytes"] = human_bytes
templates.env.filters["when"] = format_time
templates.env.filters["udomain"] = domain_to_unicode
templates.env.filters["uaddress"] = unicode_address
templates.env.globals["percent"] = percent
templates.env.globals["done_messages"] = DONE_MESSAGES
templates.env.globals["done_warnings"] = DONE_WARNINGS


def render(
    request: Request, name: str, context: dict[str, Any] | None = None, *, status: int = 200
) -> HTMLResponse:
    """Render ``name`` with the logged-in operator and the CSRF token in the context."""
    auth = getattr(request.state, "auth", None)
    ctx: dict[str, Any] = {
        "me": auth.me if auth is not None else None,
        "is_admin": auth is not None and auth.is_admin,
        "csrf_token": auth.csrf_token if auth is not None else "",
        "settings": request.app.state.settings,
    }
    if context:
        ctx.update(context)
    return templates.TemplateResponse(request, name, ctx, status_code=status)
