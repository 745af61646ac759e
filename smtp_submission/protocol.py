"""The submission protocol object: aiosmtpd's ``SMTP`` with AUTH off the event loop.

What this subclass changes, and why:

* ``auth_PLAIN`` / ``auth_LOGIN`` decode the credentials as aiosmtpd does, then verify them
  through ``SubmissionHandler.authenticate`` in a worker thread (argon2 takes tens of
  milliseconds; aiosmtpd's ``authenticator`` callback would run it on the loop).
* On the STARTTLS port a transaction before TLS gets ``530 5.7.0 Must issue a STARTTLS
  command first`` (RFC 3207 section 4), AUTH before TLS ``538 5.7.11`` (RFC 4954 section 6);
  on the implicit-TLS port (RFC 8314) the connection is TLS from the first byte.
* ``push`` gives every reply an enhanced status code (``replies.with_enhanced_code``).
* ``connection_made`` counts the connection (``app.connlimit``): past the limit in all or per
  client address the client gets ``421 4.7.0`` and the connection is closed, as at the MX.
* Refusals the protocol layer makes itself (every 4xx/5xx pushed that no MAIL/RCPT/DATA hook
  returned: syntax errors, ``530`` TLS or AUTH first, ``535``/``454`` AUTH, ``552`` too big,
  aiosmtpd's ``502`` after too many unknown commands, the ``421`` of the connection limits
  and of the idle timeout, which aiosmtpd would close without a reply) are counted and
  tracked as at the MX (app/protocol_refusals.py); ``stage`` is the command being answered,
  noted by the command table at each lookup.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import warnings
from base64 import b64decode
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, AuthResult, syntax

from app import metrics, protocol_refusals
from app.connlimit import TOTAL, ConnectionCounter
from app.services.queue import new_queue_id
from smtp_submission import replies
from smtp_submission import tracking as tracked
from smtp_submission.envelope import SubmissionEnvelope
from smtp_submission.handler import AuthFailed, SubmissionHandler

log = logging.getLogger("smtp_submission")

# Commands that open or continue a mail transaction: they need TLS first on port 587.
_NEED_TLS = frozenset({"MAIL", "RCPT", "DATA", "VRFY", "EXPN"})
# Hooks whose refusals the handler tracks itself (smtp_submission/handler.py).
_SELF_TRACKED = frozenset({"MAIL", "RCPT", "DATA"})

Command = Callable[[str | None], Awaitable[None]]


class _CommandTable(dict[str, Command]):
    """aiosmtpd's command table; each lookup of the command read notes its verb (or
    ``UNKNOWN``) as the stage a refusal is recorded under. HELP looks its argument up in the
    same table: ``paused`` keeps the stage HELP then."""

    def __init__(self, methods: dict[str, Command], protocol: SubmissionSMTP) -> None:
        super().__init__(methods)
        self._protocol = protocol
        self.paused = False

    def get(self, key: str, default: Any = None) -> Any:
        method = super().get(key, default)
        if not self.paused:
            self._protocol.stage = key if method is not None else "UNKNOWN"
        return method


class SubmissionSMTP(SMTP):
    # The LOGIN prompts Postfix and Exchange send (aiosmtpd's end in a NUL octet).
    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"

    def __init__(
        self,
        handler: SubmissionHandler,
        *,
        implicit_tls: bool,
        connections: ConnectionCounter | None = None,
        **kwargs: Any,
    ) -> None:
        with warnings.catch_warnings():
            # "AUTH without requiring TLS": on the implicit-TLS port every byte is TLS.
            warnings.simplefilter("ignore", UserWarning)
            super().__init__(
                handler,
                auth_required=True,
                auth_require_tls=not implicit_tls,
                require_starttls=False,
                **kwargs,
            )
        self.submission = handler
        self.implicit_tls = implicit_tls
        self._connections = connections
        self._client_ip: str | None = None  # set once the connection is counted
        self._refused = False
        self._commands = _CommandTable(self._smtp_methods, self)
        self._smtp_methods = self._commands
        self.stage = "CONNECT"  # the command being answered (see _CommandTable)
        self.session_id: str | None = None  # made on the session's first refusal
        self._hook_reply: object = None  # the last MAIL/RCPT/DATA hook reply (tracked there)
        self._login_tried: str | None = None  # the login name of the AUTH being answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None and self._connections is not None:  # not the STARTTLS call
            peer = transport.get_extra_info("peername")
            ip = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
            refused = self._connections.acquire(ip)
            if refused is not None:
                self._refused = True
                log.warning("connection limit (%s) reached, refusing client=%s", refused, ip)
                reply = (
                    replies.TOO_MANY_CONNECTIONS
                    if refused == TOTAL
                    else replies.TOO_MANY_CONNECTIONS_IP
                )
                self._track_refusal(reply, client_ip=ip)
                transport.write(reply.encode() + b"\r\n")  # type: ignore[attr-defined]
                transport.close()
                return
            self._client_ip = ip
        if not getattr(self, "_metrics_counted", False):  # not again after STARTTLS
            self._metrics_counted = True
            metrics.connection_opened("submission")
        super().connection_made(transport)
        if self.implicit_tls and self.session is not None:
            self.session.ssl = {"cipher": transport.get_extra_info("cipher")}

    def _timeout_cb(self) -> None:
        """The idle timer fired: answer ``421 4.4.2`` (tracked like any refusal of this layer)
        before aiosmtpd closes the connection, instead of closing without a word."""
        transport: Any = self.transport
        if transport is not None and not transport.is_closing():
            self._track_refusal(replies.IDLE_TIMEOUT)
            transport.write(replies.IDLE_TIMEOUT.encode() + b"\r\n")
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._client_ip is not None and self._connections is not None:
            self._connections.release(self._client_ip)
            self._client_ip = None
        if getattr(self, "_metrics_counted", False):
            self._metrics_counted = False
            metrics.connection_closed("submission")
        super().connection_lost(error)

    def _create_envelope(self) -> SubmissionEnvelope:
        return SubmissionEnvelope()

    @property
    def encrypted(self) -> bool:
        return self.implicit_tls or self._tls_protocol is not None

    async def push(self, status: str | bytes) -> None:
        original = status.decode() if isinstance(status, bytes) else status
        text = replies.with_enhanced_code(original, hostname=self.hostname)
        await super().push(text)
        hook_reply, self._hook_reply = self._hook_reply, None
        if text[:1] in ("4", "5") and status is not hook_reply:
            self._track_refusal(text, original=original)
        if text[:1] != "3":  # AUTH answered (334 is a challenge: the exchange goes on)
            self._login_tried = None

    def _track_refusal(
        self, reply: str, *, original: str | None = None, client_ip: str | None = None
    ) -> None:
        """Count and track a refusal this layer made (module docstring); no I/O."""
        session = self.session
        peer = session.peer if session is not None else None
        ip = client_ip or (str(peer[0]) if isinstance(peer, tuple) and peer else "unknown")
        envelope = self.envelope if isinstance(self.envelope, SubmissionEnvelope) else None
        refusal = tracked.protocol_refusal(
            session,
            envelope,
            stage=protocol_refusals.stage_of(self.stage, original),
            reply=reply,
            client_ip=ip,
            login_tried=self._login_tried,
        )
        self.session_id = protocol_refusals.record(
            self.submission.tracking,
            refusal,
            service="submission",
            metrics_service="submission",
            session_id=self.session_id,
            new_id=new_queue_id,
        )

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        status = await super()._call_handler_hook(command, *args)
        if command in _SELF_TRACKED:
            self._hook_reply = status
        return status

    @syntax("HELP [command]")  # aiosmtpd's own text: HELP lists and explains itself as before
    async def smtp_HELP(self, arg: str) -> None:
        self._commands.paused = True  # its argument is looked up in the command table
        try:
            await super().smtp_HELP(arg)
        finally:
            self._commands.paused = False

    async def _tls_first(self) -> bool:
        if self.encrypted:
            return False
        await self.push(replies.STARTTLS_FIRST)
        return True

    async def smtp_MAIL(self, arg: str | None) -> None:
        if not await self._tls_first():
            await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if not await self._tls_first():
            await super().smtp_RCPT(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if not await self._tls_first():
            await super().smtp_DATA(arg)

    async def smtp_EXPN(self, arg: str) -> None:
        await self.push(replies.EXPN_REPLY)

    # ------------------------------------------------------------------ AUTH (RFC 4954)
    async def _verify(self, login: bytes, password: bytes) -> AuthResult:
        self._login_tried = login.decode("utf-8", errors="replace")
        peer = self.session.peer if self.session is not None else None
        peer_ip = str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"
        try:
            identity = await self.submission.authenticate(
                login=login, password=password, peer_ip=peer_ip
            )
        except AuthFailed as failed:
            return AuthResult(success=False, handled=False, message=failed.reply)
        return AuthResult(success=True, auth_data=identity, message=replies.AUTH_OK)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        blob: Any
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await self.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        parts = bytes(blob).split(b"\x00")
        if len(parts) != 3:  # RFC 4616 section 2: [authzid] NUL authcid NUL passwd
            await self.push("501 5.5.2 Cannot split the PLAIN response")
            return AuthResult(success=False, handled=True)
        authzid, login, password = parts
        if authzid and authzid != login:  # no proxy authorization
            return AuthResult(success=False, handled=False, message=replies.AUTH_INVALID)
        return await self._verify(login, password)

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        login: Any
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if login is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            try:
                login = b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await self.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        return await self._verify(bytes(login), bytes(password))
