"""Response headers every answer carries (security, caching) and HEAD for every GET route.

* ``Content-Security-Policy``: the portal loads only its own scripts, styles and images, and
  no page may be framed (``frame-ancestors 'none'``, with ``X-Frame-Options: DENY`` for old
  browsers); ``X-Content-Type-Options: nosniff``; ``Referrer-Policy: same-origin``;
  ``Strict-Transport-Security`` only when ``MAILHOST_COOKIE_SECURE`` says we are behind HTTPS
  (RFC 6797 section 7.2: never over plain HTTP).
* ``Cache-Control: no-store`` on everything but ``/static/``: portal pages show secrets (new
  passwords, tokens, the CSV import's passwords in its preview) and API answers are per token.
* HEAD is answered wherever GET is (RFC 9110 section 9.3.2): the request runs as GET and the
  body is dropped, so the headers, Content-Length included, are those of the GET.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
STATIC_PREFIX = "/static/"
HSTS = "max-age=31536000"


class SecurityHeaders:
    """Adds the headers above to every HTTP answer and serves HEAD as a body-less GET."""

    def __init__(self, app: ASGIApp, *, https: bool) -> None:
        self.app = app
        self.headers: list[tuple[bytes, bytes]] = [
            (b"content-security-policy", CSP.encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
        ]
        if https:
            self.headers.append((b"strict-transport-security", HSTS.encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        head = scope["method"] == "HEAD"
        if head:
            scope = {**scope, "method": "GET"}
        static = scope["path"].startswith(STATIC_PREFIX)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"cache-control"
                ] if not static else list(message.get("headers", []))  # fmt: skip
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in self.headers if k not in present]
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            elif head and message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {**message, "body": b""}
            await send(message)

        await self.app(scope, receive, send_with_headers)
