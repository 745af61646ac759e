"""The operator portal: server-rendered pages for ISP staff, mounted at ``/``."""

from __future__ import annotations

import inspect
import logging
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
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import MailhostError, NotFoundError, PermissionDeniedError, TemporaryError
from web.params import SEARCH_MAX_LENGTH
from web.portal.errors import LoginRequired, PortalError, SeeOther
from web.portal.render import render

API_PREFIX = "/api/"
# Seconds a client is asked to wait after a 503 (the API's problem documents say the same).
RETRY_AFTER_SECONDS = 5
log = logging.getLogger(__name__)


def portal_errors() -> Iterator[None]:
    """Turn the services' 'no such object' into the portal's 404 page, in one place."""
    try:
        yield
    except NotFoundError as exc:
        raise PortalError(404, "Not found", exc.message) from exc
    except PermissionDeniedError as exc:
        raise PortalError(403, "Not allowed", exc.message) from exc
    except TemporaryError:
        raise  # the 503 page (``install_portal``), not a refusal of the request
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
        charts_pages,
        customer_admin_pages,
        customers,
        dashboard,
        domains,
        login_totp,
        mailbox_rules,
        mailboxes,
        me,
        operators,
        queue,
        relay,
        scanning,
        sending,
        tenant,
        token_pages,
        totp_pages,
        tracking,
    )

    router = APIRouter(
        include_in_schema=False, dependencies=[Depends(portal_errors, scope="function")]
    )
    for module in (
        auth,
        dashboard,
        charts_pages,
        customers,
        domains,
        mailboxes,
        mailbox_rules,
        sending,
        scanning,
        aliases,
        queue,
        relay,
        tracking,
        bulk,
        operators,
        token_pages,  # the ISP's /tokens and (issue 15) a customer's /my/tokens
        account,
        audit_log,
        login_totp,  # issue 15: the second login step (TOTP)
        tenant,  # issue 15: customer administrators' pages under /my
        totp_pages,  # issue 15: two-factor enrolment
        customer_admin_pages,  # issue 15: /customers/{id}/admins
        me,
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


def unavailable_page(request: Request) -> Response:
    """503 with ``Retry-After`` (RFC 9110 section 15.6.4): the database (or another resource
    the page needs) did not answer. Nothing of the cause is shown: the log has it."""
    response = error_page(
        request,
        503,
        "Temporarily unavailable",
        "The portal cannot reach its database at the moment, so this page cannot be shown and "
        "nothing was saved. Try again in a minute.",
    )
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


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

    thresholds = app.state.settings.quota_warning_thresholds
    app.state.usage_cache = UsageCache(
        app.state.session_factory, app.state.store, near_percent=min(thresholds, default=80)
    )
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
        if isinstance(exc, SeeOther):
            return RedirectResponse(exc.target, status_code=303)
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
        # A malformed or out-of-range id in the path: there is nothing at that address. A
        # bad query parameter (a filter, a page cursor, a too long search): the request is
        # refused, saying which parameter.
        wrong = [e for e in exc.errors() if tuple(e.get("loc", ()))[:1] != ("path",)]
        if len(wrong) == len(exc.errors()) and wrong:
            names = ", ".join(sorted({str(e["loc"][-1]) for e in wrong}))
            return error_page(
                request,
                422,
                "Invalid request",
                f"The value of {names} in the address is not valid "
                f"(ids are whole numbers; searches are at most {SEARCH_MAX_LENGTH} characters).",
            )
        return error_page(request, 404, "Not found", "There is no page at this address.")

    async def on_unavailable(request: Request, exc: Exception) -> Response:
        # Registered on the application, so it also sees errors raised before routing or in
        # dependencies; API paths keep their problem documents.
        if _is_api(request):
            from web.api.problems import problem_for

            problem = problem_for(request, exc)
            if problem is not None:
                return problem
        log.warning("portal: database unavailable on %s: %s", request.url.path, exc)
        return unavailable_page(request)

    async def on_data_error(request: Request, exc: Exception) -> Response:
        # The database refused a value the portal let through (out of range, NUL byte).
        if _is_api(request):
            from web.api.problems import problem_for

            problem = problem_for(request, exc)
            if problem is not None:
                return problem
        log.warning("portal: value refused by the database on %s: %s", request.url.path, exc)
        return error_page(
            request,
            422,
            "Invalid request",
            "A value in the request cannot be stored (out of range or invalid characters), "
            "so nothing was saved.",
        )

    app.add_exception_handler(DataError, on_data_error)
    for unavailable in (OperationalError, PoolTimeoutError, TemporaryError):
        app.add_exception_handler(unavailable, on_unavailable)
    app.add_exception_handler(PortalError, on_portal_error)
    app.add_exception_handler(LoginRequired, on_login_required)
    from web.portal.me import install_user_login

    install_user_login(app)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
