"""Request-body limits and API authentication before any body is read (pure ASGI middleware).

Theory of operation. FastAPI reads and parses a request body before it runs the route's
dependencies, so without this layer an anonymous client could make the process buffer and
parse hundreds of megabytes just to be told 401. ``BodyGuard`` sits in front of the framework:

* An ``/api/`` request that announces a body (``Content-Length`` > 0 or chunked) is
  authenticated first, from the ``Authorization`` header alone; no token, or a bad one, is
  answered 401 without reading a byte of the body. The verified principal is left in the
  request state, so the route's own check does not verify the token a second time.
* A declared ``Content-Length`` above the path's limit is answered 413 at once.
* A chunked (or lying) body is counted as it streams; the moment it passes the limit the
  application's reads fail and whatever it was about to answer is replaced by the 413.

413 and 401 answers carry ``Connection: close``: the rest of the body is never read, and the
connection cannot be reused after it (RFC 9112 section 9.6; RFC 9110 section 15.5.14).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from web.api.auth import PRINCIPAL_STATE, principal_for_header
from web.api.problems import API_PREFIX, problem_for, problem_response

# The portal's CSV import: the file itself (multipart) and its confirmation (the same text
# re-posted in a form field); every other route, portal or API, gets the small limit.
UPLOAD_PATHS = frozenset({"/import/preview", "/import/confirm"})
# A relay domain's recipient CSV import, in the portal and the API (web/portal/relay.py,
# web/api/routes/relay.py): ".../recipients/import" under these prefixes.
UPLOAD_PREFIXES = ("/relay/", "/api/v1/relay-domains/")
UPLOAD_SUFFIX = "/recipients/import"
_BODYLESS_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class BodyTooLarge(Exception):
    """Raised into the application when the streamed body passes the limit."""


def _announced_length(headers: Headers) -> int | None:
    raw = headers.get("content-length")
    if raw is None or not raw.isdigit():
        return None  # the server (h11/httptools) refuses malformed values itself
    return int(raw)


def _has_body(headers: Headers) -> bool:
    length = _announced_length(headers)
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    return chunked or (length is not None and length > 0)


class BodyGuard:
    """Caps request bodies per path and authenticates API requests before their body."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        session_factory: sessionmaker[Session],
        max_body_bytes: int,
        max_upload_bytes: int,
        portal_too_large: Callable[[Request, int], Response],
    ) -> None:
        self.app = app
        self.session_factory = session_factory
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.portal_too_large = portal_too_large

    def limit_for(self, path: str) -> int:
        upload = path in UPLOAD_PATHS or (
            path.startswith(UPLOAD_PREFIXES) and path.endswith(UPLOAD_SUFFIX)
        )
        return self.max_upload_bytes if upload else self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in _BODYLESS_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path: str = scope["path"]
        limit = self.limit_for(path)
        is_api = path.startswith(API_PREFIX)

        if is_api and _has_body(headers):
            refusal = await self._authenticate(scope, headers)
            if refusal is not None:
                await _closing(refusal)(scope, receive, send)
                return

        length = _announced_length(headers)
        if length is not None and length > limit:
            await self._too_large(scope, limit)(scope, receive, send)
            return

        state: dict[str, Any] = {"received": 0, "exceeded": False, "started": False}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > limit:
                    state["exceeded"] = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            if state["exceeded"] and message["type"] == "http.response.start":
                # The application turned the failed read into an answer of its own (FastAPI
                # makes it a 400): the client gets the 413 instead.
                state["started"] = True
                await self._too_large(scope, limit)(scope, receive, send)
                return
            if state["exceeded"] and message["type"] == "http.response.body":
                return
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BodyTooLarge:
            if state["started"]:
                raise
            await self._too_large(scope, limit)(scope, receive, send)

    async def _authenticate(self, scope: Scope, headers: Headers) -> Response | None:
        request = Request(scope)
        client = scope.get("client")
        ip = client[0] if client else None
        try:
            principal = await run_in_threadpool(
                principal_for_header, self.session_factory, headers.get("authorization"), ip
            )
        except Exception as exc:
            response = problem_for(request, exc)
            if response is None:
                raise
            return response
        scope.setdefault("state", {})[PRINCIPAL_STATE] = principal
        return None

    def _too_large(self, scope: Scope, limit: int) -> Response:
        request = Request(scope)
        if request.url.path.startswith(API_PREFIX):
            response: Response = problem_response(
                request,
                status=413,
                slug="payload-too-large",
                title="Payload too large",
                detail=f"the request body is larger than {limit} bytes",
            )
        else:
            response = self.portal_too_large(request, limit)
        return _closing(response)


def _closing(response: Response) -> Response:
    response.headers["Connection"] = "close"
    return response
