"""The operator portal: server-rendered pages for ISP staff, mounted at ``/``."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import MailhostError, NotFoundError, PermissionDeniedError
from web.portal.errors import LoginRequired, PortalError
from web.portal.render import render

API_PREFIX = "/api/"


def portal_errors() -> Iterator[None]:
    """Turn the services' 'no such object' into the portal's 404 page, in one place."""
    try:
        yield
    except NotFoundError as exc:
        raise PortalError(404, "Not found", exc.message) from exc
    except PermissionDeniedError as exc:
        raise PortalError(403, "Not allowed", exc.message) from exc
    except MailhostError as exc:
        # A form-less request (status button, bad filter value) the service refused.
        raise PortalError(400, "Request refused", exc.message) from exc


def build_router() -> APIRouter:
    from web.portal import (
        account,
        aliases,
        audit_log,
        auth,
        bulk,
        customers,
        dashboard,
        domains,
        mailboxes,
        operators,
        queue,
    )

    router = APIRouter(
        include_in_schema=False, dependencies=[Depends(portal_errors, scope="function")]
    )
    for module in (
        auth,
        dashboard,
        customers,
        domains,
        mailboxes,
        aliases,
        queue,
        bulk,
        operators,
        account,
        audit_log,
    ):
        router.include_router(module.router)
    return router


def _is_api(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIX)


async def _call(handler: Any, request: Request, exc: Exception) -> Response:
    """Run an exception handler that may be sync or async (Starlette accepts both)."""
    result = handler(request, exc)
    if inspect.isawaitable(result):
        result = await result
    assert isinstance(result, Response)
    return result


def error_page(request: Request, status: int, title: str, message: str) -> Response:
    return render(
        request, "error.html", {"title": title, "message": message, "status": status}, status=status
    )


def portal_too_large(request: Request, limit: int) -> Response:
    return error_page(
        request,
        413,
        "Too large",
        f"The submitted form or file is larger than {limit // 1024} KiB, so nothing was saved.",
    )


def install_portal(app: FastAPI) -> None:
    """Add the portal routes and its HTML error pages (API paths keep their JSON errors)."""
    from web.portal.usage import UsageCache

    app.state.usage_cache = UsageCache(app.state.session_factory, app.state.store)
    app.include_router(build_router())
    api_http_handler = app.exception_handlers.get(StarletteHTTPException, http_exception_handler)
    api_validation_handler = app.exception_handlers.get(
        RequestValidationError, request_validation_exception_handler
    )

    async def on_portal_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PortalError)
        return error_page(request, exc.status, exc.title, exc.message)

    async def on_login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        target = "/login" if exc.next_url == "/" else f"/login?next={quote(exc.next_url)}"
        return RedirectResponse(target, status_code=303)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if _is_api(request):
            return await _call(api_http_handler, request, exc)
        if exc.status_code == 404:
            return error_page(request, 404, "Not found", "There is no page at this address.")
        return error_page(request, exc.status_code, "Request refused", str(exc.detail))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        if _is_api(request):
            return await _call(api_validation_handler, request, exc)
        # A malformed id or filter in a portal URL: nothing there to show.
        return error_page(request, 404, "Not found", "There is no page at this address.")

    app.add_exception_handler(PortalError, on_portal_error)
    app.add_exception_handler(LoginRequired, on_login_required)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
