"""The SMTP client side of one destination: connect, opportunistic STARTTLS, send messages.

Opportunistic TLS as Postfix's "may" level: STARTTLS whenever offered; the certificate is
verified (chain and MX host name) and the result recorded, an unverifiable one is still used
(encryption beats clear text) and noted "unverified". A handshake that fails is recorded and
the host is retried in clear text on a new connection, as Postfix does, never silently.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field

import aiosmtplib

from app.config import Settings
from app.services.queue import Reply

TLS_UNVERIFIED = "unverified"
TLS_FAILED = "failed"
# How long the outcome of a host's TLS handshake is remembered (saves a second connection to
# a host with a self-signed certificate, and a failing handshake on every attempt).
_TLS_MEMORY_SECONDS = 3600.0


class ConnectFailure(Exception):
    """The host could not be used (no connection, bad greeting, EHLO refused)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


class LoopDetected(ConnectFailure):
    """The host greets with our own name: the mail would come back to us (a loop)."""


def _greets_as(greeting: str, hostname: str) -> bool:
    words = greeting.split()
    return bool(words) and words[0].lower().rstrip(".") == hostname.lower().rstrip(".")


@dataclass(slots=True)
class TLSMemory:
    """Per MX host name: 'unverified' or 'failed', with when it was learnt."""

    notes: dict[str, tuple[str, str, float]] = field(default_factory=dict)

    def get(self, host: str) -> tuple[str, str] | None:
        note = self.notes.get(host)
        if note is None or time.monotonic() - note[2] > _TLS_MEMORY_SECONDS:
            return None
        return note[0], note[1]

    def put(self, host: str, kind: str, detail: str) -> None:
        self.notes[host] = (kind, detail, time.monotonic())


def _ssl_cause(exc: BaseException) -> BaseException | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _unverified_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _tls_text(smtp: aiosmtplib.SMTP, verified: str) -> str:
    transport = smtp.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    version = ssl_object.version() if ssl_object is not None else "TLS"
    return f"{version} {verified}"


@dataclass(slots=True)
class Connection:
    smtp: aiosmtplib.SMTP
    host: str
    address: str
    tls: str

    def reply(self, code: int, text: str) -> Reply:
        return Reply(code, text, f"{self.host}[{self.address}]", self.tls)

    async def close(self) -> None:
        try:
            await self.smtp.quit()
        except Exception:  # noqa: BLE001 - the peer may have gone already
            self.smtp.close()


async def _connect_once(
    settings: Settings, host: str, address: str, *, starttls: str | None, port: int | None = None
) -> tuple[aiosmtplib.SMTP, str]:
    """One connection; ``starttls`` None = verify, 'unverified' = do not verify, 'failed' =
    clear text. Returns the client and what protects it."""
    where = f"{host}[{address}]"
    smtp = aiosmtplib.SMTP(
        hostname=address,
        port=port if port is not None else settings.delivery_port,
        local_hostname=settings.hostname,
        timeout=settings.delivery_command_timeout,
        start_tls=False,
        use_tls=False,
    )
    try:
        greeting = await smtp.connect(timeout=settings.delivery_connect_timeout)
        if _greets_as(greeting.message, settings.hostname):
            smtp.close()
            raise LoopDetected(
                Reply(
                    451,
                    f"4.4.6 mail loop: {where} greets as {settings.hostname}, this host",
                    where,
                )
            )
        await smtp.ehlo()
    except aiosmtplib.SMTPResponseException as exc:
        smtp.close()
        raise ConnectFailure(Reply(exc.code, exc.message, where)) from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        smtp.close()
        raise ConnectFailure(
            Reply(421, f"4.4.1 connection to {where} failed: {exc}", where)
        ) from exc
    if not smtp.supports_extension("starttls"):
        return smtp, "none (STARTTLS not offered)"
    if starttls == TLS_FAILED:
        return smtp, "none (STARTTLS handshake failed before, sent in clear text)"
    verify = starttls is None
    ctx = ssl.create_default_context() if verify else _unverified_context()
    try:
        await smtp.starttls(tls_context=ctx, server_hostname=host)
    except aiosmtplib.SMTPResponseException as exc:
        # STARTTLS refused with a reply: the session goes on in clear text (RFC 3207 4.1).
        return smtp, f"none (STARTTLS refused: {exc.code} {exc.message})"
    except Exception as exc:
        smtp.close()
        cause = _ssl_cause(exc)
        if verify and isinstance(cause, ssl.SSLCertVerificationError):
            raise _Unverified(str(cause.verify_message or cause)) from exc
        raise _HandshakeFailed(str(cause or exc)) from exc
    return smtp, _tls_text(smtp, "verified" if verify else TLS_UNVERIFIED)


class _Unverified(Exception):
    pass


class _HandshakeFailed(Exception):
    pass


async def connect(
    settings: Settings,
    host: str,
    address: str,
    memory: TLSMemory,
    *,
    port: int | None = None,
    require_tls: bool = False,
) -> Connection:
    """A ready session with ``host`` at ``address`` (EHLO done, TLS when it could be had).
    ``require_tls`` (a relay domain's policy 'required', Postfix's "encrypt" level): a session
    without TLS is refused with ``4.7.10`` (an unverified certificate is still used)."""
    conn = await _connect(settings, host, address, memory, port)
    if require_tls and conn.tls.startswith("none"):
        await conn.close()
        where = f"{host}[{address}]"
        raise ConnectFailure(
            Reply(
                454, f"4.7.10 TLS is required for this destination but {where}: {conn.tls}", where
            )
        )
    return conn


async def _connect(
    settings: Settings, host: str, address: str, memory: TLSMemory, port: int | None
) -> Connection:
    known = memory.get(host)
    mode = known[0] if known else None
    note = f" ({known[1]})" if known and known[0] == TLS_UNVERIFIED else ""
    failed_with = ""
    for _ in range(3):
        try:
            smtp, tls = await _connect_once(settings, host, address, starttls=mode, port=port)
        except _Unverified as exc:
            memory.put(host, TLS_UNVERIFIED, str(exc))
            mode, note = TLS_UNVERIFIED, f" ({exc})"
            continue
        except _HandshakeFailed as exc:
            memory.put(host, TLS_FAILED, str(exc))
            mode, note = TLS_FAILED, ""
            failed_with = str(exc)
            continue
        if mode == TLS_FAILED and known is None:
            tls = f"none (STARTTLS handshake failed: {failed_with}; sent in clear text)"
        elif mode == TLS_UNVERIFIED and tls.endswith(TLS_UNVERIFIED):
            tls += note
        return Connection(smtp, host, address, tls)
    raise ConnectFailure(Reply(421, f"4.7.0 TLS with {host}[{address}] failed", host))


async def send(
    conn: Connection, *, sender: str, recipients: list[str], data: bytes
) -> tuple[dict[str, Reply], Reply | None]:
    """One transaction. Returns the refusals by recipient and the reply to DATA (None when no
    recipient was accepted or MAIL was refused; then every recipient has a refusal)."""
    smtp = conn.smtp
    refused: dict[str, Reply] = {}
    options = (
        ["BODY=8BITMIME"] if smtp.supports_extension("8bitmime") and not data.isascii() else []
    )
    try:
        await smtp.mail(sender, options=options)
    except aiosmtplib.SMTPResponseException as exc:
        reply = conn.reply(exc.code, exc.message)
        await _rset(smtp)
        return {r: reply for r in recipients}, None
    accepted: list[str] = []
    for rcpt in recipients:
        try:
            await smtp.rcpt(rcpt)
        except aiosmtplib.SMTPResponseException as exc:
            refused[rcpt] = conn.reply(exc.code, exc.message)
        else:
            accepted.append(rcpt)
    if not accepted:
        await _rset(smtp)
        return refused, None
    try:
        response = await smtp.data(data)
    except aiosmtplib.SMTPResponseException as exc:
        reply = conn.reply(exc.code, exc.message)
        await _rset(smtp)
        return {**refused, **{r: reply for r in accepted}}, None
    return refused, conn.reply(response.code, response.message)


async def _rset(smtp: aiosmtplib.SMTP) -> None:
    try:
        await smtp.rset()
    except aiosmtplib.SMTPException:
        smtp.close()
