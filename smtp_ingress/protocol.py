"""The SMTP protocol object: aiosmtpd's ``SMTP`` with Mailhost's limits and a fast DATA path.

What this subclass changes, and why:

* ``push`` gives every reply an enhanced status code (``replies.with_enhanced_code``) and
  counts errors towards the junk-command limit (``421 4.7.0`` past it).
* Connection limits are checked in ``connection_made`` (``421 4.7.0``), early talkers (a
  command before the greeting, RFC 5321 section 4.3.1 says the client waits) get ``554``.
* Idle timeout and the DATA deadline answer ``421 4.4.2`` before closing (aiosmtpd closes
  silently).
* ``smtp_DATA`` reads the body in slices of at most ``data.DATA_SLICE`` instead of aiosmtpd's
  loop per line, decodes each as it arrives (``data.BodyDecoder``: memory per connection is
  bounded whatever the line structure) and yields to the loop between slices; the handler
  keeps the decoded body, spilling it to the first recipient's ``tmp/`` past 256 KiB. Only
  ``CRLF.CRLF`` ends DATA; ``LF.LF`` and friends are part of the body and make it refused
  (SMTP smuggling).
* Pipelining is checked as Postfix 3.9 does for unauthenticated clients
  (``smtpd_forbid_unauth_pipelining``; an MX has no authenticated clients): RFC 2920 section
  3.1 lets EHLO, DATA, VRFY, EXPN, TURN, QUIT and NOOP only end a command group, and the
  client must wait for 354 before sending content; without EHLO, PIPELINING was never
  offered, so nothing may be sent ahead at all; and, like Postfix, the end of message content
  ends a group too (commands sent with it are how SMTP smuggling payloads arrive). A
  violation gets ``554 5.5.0`` and the connection is closed. QUIT right after the end of data
  is allowed: nothing can follow it.
* Replies to pipelined MAIL / RCPT / RSET are held while the input buffer already holds
  the client's next command line and sent with the next reply, in one ``send`` (RFC 2920
  section 3.2 allows it; Postfix does the same). Every other reply, and any reply when no
  further command is buffered, flushes everything: the server never waits for input with
  replies held back.
* ``_getaddr``: the plain ``<local@domain>`` form is matched by a regular expression; anything
  else (quotes, literals, comments, source routes) still goes through aiosmtpd's RFC 5322
  parser (which also defines a ``typing.Protocol`` class on every call).
* Refusals the protocol layer makes itself (every 4xx/5xx pushed that no MAIL/RCPT/DATA
  handler hook returned, the 421 of the connection limits and every reply ``_close_with``
  closes with) go to the handler's ``protocol_refusal`` (smtp_ingress/support.py: a counter
  and a tracking event, no I/O); ``stage`` is the command being answered.
* ``_reset_timeout``: one timer per connection that re-arms itself to the latest deadline,
  instead of cancelling and creating a timer for every command.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import re
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.smtp import SMTP

from app import metrics
from smtp_ingress import replies
from smtp_ingress.data import DATA_SLICE, BodyDecoder, BodyError
from smtp_ingress.envelope import IngressEnvelope
from smtp_ingress.prepared import PreparedSMTP

log = logging.getLogger("smtp_ingress")

# RFC 5321 section 4.1.2 Mailbox with a Dot-string local part and a plain Domain, in angle
# brackets, followed by nothing or by parameters without comments or quotes. For exactly these,
# aiosmtpd's parser returns the text between the brackets unchanged and the rest left-stripped
# (checked against it in tests/protocol/test_smtp_units.py); everything else falls back to it.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(
    rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    rf"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>( [^()\\\"]*)?",
)

_BODY_ERROR_REPLIES = {
    BodyError.BARE_NEWLINE: replies.BARE_NEWLINE,
    BodyError.NUL: replies.NUL_IN_DATA,
    BodyError.LINE_TOO_LONG: replies.DATA_LINE_TOO_LONG,
}


Command = Callable[[str | None], Awaitable[None]]


class ConnectionTracker:
    """Counts open connections in total and per client address (this process)."""

    def __init__(self, *, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.per_ip: Counter[str] = Counter()
        self.protocols: set[IngressSMTP] = set()
        self._total = 0

    def acquire(self, ip: str) -> str | None:
        """Register a connection, or return the 421 reply refusing it."""
        if self._total >= self.max_total:
            log.warning("connection limit reached, refusing client=%s", ip)
            return replies.TOO_MANY_CONNECTIONS
        if self.per_ip[ip] >= self.max_per_ip:
            log.warning("per-address connection limit reached, refusing client=%s", ip)
            return replies.TOO_MANY_CONNECTIONS_IP
        self._total += 1
        self.per_ip[ip] += 1
        return None

    def register(self, protocol: IngressSMTP) -> None:
        self.protocols.add(protocol)

    def release(self, ip: str, protocol: IngressSMTP) -> None:
        if protocol in self.protocols:
            self.protocols.discard(protocol)
        self._total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]

    @property
    def total(self) -> int:
        return self._total


# RFC 2920 section 3.1: commands that can only be the last of a pipelined group (TURN is not
# implemented; QUIT ends the session anyway; HELO because it never offers PIPELINING).
_GROUP_ENDERS = frozenset({"EHLO", "HELO", "DATA", "VRFY", "EXPN", "NOOP"})
# Hooks whose refusals the handler tracks and counts itself (the rest is the protocol's).
_SELF_TRACKED = frozenset({"MAIL", "RCPT", "DATA"})


class _CommandTable(dict[str, Command]):
    """aiosmtpd's command table, consulted once per command line read: unknown verbs go to
    our handler instead of aiosmtpd's fixed budget of 5 (the configurable junk limit applies
    instead), and a command that breaks pipelining rules goes to the refusal."""

    def __init__(
        self,
        methods: dict[str, Command],
        unknown: Callable[[str, str | None], Awaitable[None]],
        out_of_sync: Callable[[str], bool],
        refuse: Command,
    ) -> None:
        super().__init__(methods)
        self._unknown = unknown
        self._out_of_sync = out_of_sync
        self._refuse = refuse

    def get(self, key: str, default: object = None) -> Command:
        if self._out_of_sync(key):
            return self._refuse
        method = super().get(key)
        return method if method is not None else functools.partial(self._unknown, key)


class IngressSMTP(PreparedSMTP):
    def __init__(
        self,
        handler: Any,
        *,
        tracker: ConnectionTracker,
        max_junk: int,
        max_noop: int = 100,
        data_timeout: float,
        greet_delay: float,
        normalize_bare_lf: bool = False,
        **kwargs: Any,
    ) -> None:
        # aiosmtpd keeps command_size_limits on the class and mutates it in EHLO, so
        # concurrent sessions would raise each other's MAIL limit: give each its own.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        super().__init__(handler, **kwargs)
        self._smtp_methods = _CommandTable(
            self._smtp_methods, self._smtp_unknown, self._out_of_sync, self._refuse_pipelining
        )
        self._sent_ahead = False  # input arrived after the end of data before our reply
        self._tracker = tracker
        self._max_junk = max_junk
        self._data_timeout = data_timeout
        self._greet_delay = greet_delay
        self._normalize_bare_lf = normalize_bare_lf
        self._junk = 0
        self._max_noop = max_noop
        self._noop = 0
        self._greeted = False
        self._early_talker = False
        self._refused = False
        self._client_ip = ""
        self.stage = "CONNECT"  # the command being answered (known verbs, or UNKNOWN)
        self.session_id: str | None = None  # made by the handler on the first refusal
        self.ended_txn: Any = None  # see _create_envelope
        self._hook_reply: object = None  # the last MAIL/RCPT/DATA hook reply (tracked there)
        self.busy = False  # inside DATA or delivery: stop() lets it finish
        self.closing = False  # the server is stopping: close after the current transaction
        self._held: list[bytes] = []  # replies not sent yet (pipelining, see push)
        self._may_hold = False  # the command being answered may have its reply held
        self._deadline = 0.0  # loop time when the idle / DATA timer fires
        self._reply_encoding = "utf-8" if self.enable_SMTPUTF8 else "ascii"

    # ------------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # first call (a second one follows STARTTLS)
            peer = transport.get_extra_info("peername")
            self._client_ip = str(peer[0]) if isinstance(peer, tuple) else "unknown"
            refusal = self._tracker.acquire(self._client_ip)
            if refusal is not None:
                self._refused = True
                self._tracker.protocols.discard(self)
                self.event_handler.protocol_refusal(self, refusal)
                transport.write(refusal.encode() + b"\r\n")  # type: ignore[attr-defined]
                transport.close()
                return
            metrics.connection_opened("smtp")
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        self._tracker.release(self._client_ip, self)
        metrics.connection_closed("smtp")
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        if not self._greeted:
            self._early_talker = True
        super().data_received(data)

    def _create_envelope(self) -> IngressEnvelope:
        # The transaction just ended, until the next command: DATA's reply is pushed after
        # the reset, and a refusal there belongs to that transaction.
        self.ended_txn = getattr(self.envelope, "txn", None)
        return IngressEnvelope()

    async def _handle_client(self) -> None:
        if self._greet_delay > 0:
            await asyncio.sleep(self._greet_delay)
        if self._early_talker:
            # RFC 5321 section 3.1: 554 instead of the greeting; pipelining before the
            # greeting is the signature of spam software that does not wait for replies.
            log.info("early talker client=%s", self._client_ip)
            self._close_with(replies.EARLY_TALKER)
            return
        self._greeted = True
        await super()._handle_client()

    def _close_with(self, reply: str) -> None:
        transport: Any = self.transport
        held, self._held = self._held, []
        self.event_handler.protocol_refusal(self, reply)
        # A transport already closing cannot take the reply (a closed TLS transport has even
        # dropped its protocol, and write() raises AttributeError: seen at server stop).
        if transport is not None and not transport.is_closing():
            transport.write(b"".join(held) + reply.encode() + b"\r\n")
            transport.close()

    def _reset_timeout(self, duration: float | None = None) -> None:
        # Called for every command: move the deadline; touch the timer only when the new
        # deadline is earlier than the one it is set for (it re-arms itself when late).
        self._deadline = self.loop.time() + (duration or self._timeout_duration)
        handle: Any = self._timeout_handle
        if handle is not None and not handle.cancelled() and handle.when() <= self._deadline:
            return
        if handle is not None:
            handle.cancel()
        self._timeout_handle = self.loop.call_at(self._deadline, self._timer_fired)

    def _timer_fired(self) -> None:
        if self.loop.time() < self._deadline:
            self._timeout_handle = self.loop.call_at(self._deadline, self._timer_fired)
            return
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        log.info("timeout client=%s busy=%s", self._client_ip, self.busy)
        self._close_with(replies.DATA_TIMEOUT if self.busy else replies.IDLE_TIMEOUT)

    def shutdown(self) -> None:
        """Server stop: close now when idle, else after the transaction in progress."""
        self.closing = True
        if not self.busy:
            self._close_with(replies.SHUTTING_DOWN)

    # ------------------------------------------------------------------ replies and limits
    async def push(self, status: str | bytes) -> None:
        text = status.decode() if isinstance(status, bytes) else status
        text = replies.with_enhanced_code(text, hostname=self.hostname)
        self._held.append(text.encode(self._reply_encoding) + b"\r\n")
        reader: Any = self._reader
        # RFC 2920 section 3.2: replies may be held while further pipelined commands are
        # already buffered; they are sent at the latest when the buffer holds no complete
        # command, so the client never waits for a reply while we wait for it.
        if not (self._may_hold and b"\n" in reader._buffer):
            held, self._held = self._held, []
            self._writer.write(b"".join(held) if len(held) > 1 else held[0])
            await self._writer.drain()
        if text and text[:1] in "45":
            if status is self._hook_reply:
                self._hook_reply = None  # the handler recorded its own refusal
            else:
                self.event_handler.protocol_refusal(self, text, status)
            if text[:1] == "5":
                self.note_junk()

    async def _holding(
        self, method: Callable[[SMTP, str | None], Awaitable[None]], arg: str | None
    ) -> None:
        self._may_hold = True
        try:
            await method(self, arg)
        finally:
            self._may_hold = False

    async def smtp_MAIL(self, arg: str | None) -> None:
        await self._holding(SMTP.smtp_MAIL, arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        await self._holding(SMTP.smtp_RCPT, arg)

    async def smtp_RSET(self, arg: str) -> None:
        await self._holding(SMTP.smtp_RSET, arg)

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        status = await super()._call_handler_hook(command, *args)
        if command in _SELF_TRACKED:
            self._hook_reply = status
        return status

    @property
    def client_ip(self) -> str:
        return self._client_ip

    def _out_of_sync(self, command: str) -> bool:
        """Whether ``command`` (just read) breaks the pipelining rules (module docstring)."""
        self.stage = command if command in self._smtp_methods else "UNKNOWN"
        self.ended_txn = None
        if self._sent_ahead:
            return True
        reader: Any = self._reader
        if not reader._buffer or command == "QUIT":
            return False
        return command in _GROUP_ENDERS or self.session is None or not self.session.extended_smtp

    async def _refuse_pipelining(self, arg: str | None) -> None:
        log.info("improper pipelining client=%s", self._client_ip)
        self._close_with(replies.PIPELINING_REFUSED)

    def _note_sent_ahead(self) -> None:
        # After the end of data the client must wait for our reply (module docstring).
        reader: Any = self._reader
        if reader._buffer and bytes(reader._buffer).upper() != b"QUIT\r\n":
            self._sent_ahead = True

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _SIMPLE_PATH.fullmatch(arg)
        if match is None:
            return super()._getaddr(arg)
        address = match.group(1)
        local = address.rpartition("@")[0]
        if self.local_part_limit and len(local) > self.local_part_limit:
            return None, None
        return address, (match.group(2) or "").lstrip()

    def note_junk(self) -> None:
        self._junk += 1
        if self._junk > self._max_junk:
            log.info("junk limit client=%s", self._client_ip)
            self._close_with(replies.TOO_MANY_ERRORS)

    def note_noop(self) -> None:
        """NOOP, RSET or VRFY: harmless alone, but a session of nothing else is abuse. Counted
        apart from errors (Postfix's smtpd_junk_command_limit, 100 by default, counts just
        these), so a big sender's RSET between transactions does not use up the error budget."""
        self._noop += 1
        if self._noop > self._max_noop:
            log.info("noop limit client=%s", self._client_ip)
            self._close_with(replies.TOO_MANY_NOOPS)

    def transaction_done(self) -> None:
        # Like Postfix, a delivered message clears the junk counts of a long session.
        self._junk = 0
        self._noop = 0

    async def _smtp_unknown(self, command: str, arg: str | None) -> None:
        log.info("unknown command client=%s", self._client_ip)
        await self.push(replies.UNKNOWN_COMMAND)

    async def smtp_HELP(self, arg: str) -> None:
        self.note_junk()
        await self.push(replies.HELP_REPLY)

    async def smtp_EXPN(self, arg: str) -> None:
        await self.push(replies.EXPN_REPLY)

    async def smtp_ETRN(self, arg: str | None) -> None:
        """RFC 1985 ETRN: aiosmtpd has no such command; the handler's hook decides."""
        if await self.check_helo_needed():
            return
        await self.push(await self._call_handler_hook("ETRN", arg))

    async def smtp_AUTH(self, arg: str) -> None:
        await self.push(replies.AUTH_REPLY)

    # ------------------------------------------------------------------ DATA
    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed():
            return
        envelope = self.envelope
        assert isinstance(envelope, IngressEnvelope)
        if not envelope.rcpt_tos:
            await self.push(replies.NEED_RCPT)
            return
        if arg:
            await self.push(replies.DATA_SYNTAX)
            return
        await self.push(replies.DATA_START)
        self.busy = True
        # One deadline for the whole DATA phase (and delivery), replacing the idle timer.
        self._reset_timeout(self._data_timeout)
        handler: Any = self.event_handler
        body = handler.open_body(envelope)
        try:
            decoder = await self._stream_body(body)
            self._note_sent_ahead()
            if decoder.too_big:
                reply = replies.TOO_BIG
            elif decoder.error is not None:
                reply = _BODY_ERROR_REPLIES[decoder.error]
            else:
                envelope.body = body
                reply = await self._call_handler_hook("DATA")
        finally:
            self.busy = False
            envelope.body = None
            # Client gone, deadline, refusal or delivered: no spill file is left behind (a
            # body being delivered is left to the delivery, which removes it itself).
            handler.discard_body(body)
        self._reset_timeout()
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        self._note_sent_ahead()
        await self.push(reply)
        if self.closing:
            self._close_with(replies.SHUTTING_DOWN)

    async def _stream_body(self, body: Any) -> BodyDecoder:
        """Read the body slice by slice up to the final ``.CRLF``, decoding as it arrives
        into ``body`` (spilled to disk by the handler past its memory budget). A refused or
        oversized body is read on to its end and dropped, so the session stays in sync (RFC
        5321 4.2.5). Between slices the loop serves other clients: ``StreamReader.read``
        returns at once while data is buffered, hence the explicit yield."""
        reader: Any = self._reader
        handler: Any = self.event_handler
        decoder = BodyDecoder(
            size_limit=self.data_size_limit, normalize_bare_lf=self._normalize_bare_lf
        )
        dropped = False
        while not decoder.done:
            chunk: bytes = await reader.read(DATA_SLICE)
            if not chunk:
                raise asyncio.IncompleteReadError(b"", None)  # connection closed in DATA
            decoded = decoder.feed(chunk)
            if decoder.refused:
                if not dropped:  # free the memory and the spill file at once
                    dropped = True
                    handler.discard_body(body)
            elif decoded:
                body.append(decoded)
                if body.needs_flush:
                    await handler.flush_body(body)
            await asyncio.sleep(0)
        if decoder.leftover:
            # Pipelined input after the end of data goes back in front of the reader, as
            # if read only now (aiosmtpd manages this private buffer the same way).
            reader._buffer[0:0] = decoder.leftover
        return decoder
