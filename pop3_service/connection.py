"""One POP3 client connection: buffered input lines and output bytes, flow control, limits."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import typing
from collections import Counter
from collections.abc import Callable

from pop3_service.session import MAX_LINE_BUFFER

log = logging.getLogger(__name__)

# Stop reading from a client that pipelines more than this without reading our replies.
READ_BUFFER_LIMIT = 256 * 1024
# Transport write buffer high-water mark: bounds memory per connection while streaming.
WRITE_BUFFER_HIGH = 1024 * 1024
# Flush pipelined replies once this much is queued even if more commands are waiting.
FLUSH_THRESHOLD = 256 * 1024
TLS_HANDSHAKE_TIMEOUT = 30.0
# Sent instead of the greeting when a connection limit is reached.  RFC 3206 section 4:
# [SYS/TEMP] is a temporary system problem, worth trying again later, so a client retries
# without asking the user anything.  Not [IN-USE] (RFC 2449 section 8.1.1): that says the
# *maildrop* is locked, which tells users their mail is being read elsewhere.  RFC 1939 has
# no -ERR greeting, but clients treat any -ERR as "cannot connect" (Dovecot does the same).
TOO_MANY_CONNECTIONS = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
TOO_MANY_CONNECTIONS_IP = b"-ERR [SYS/TEMP] Too many connections from your address\r\n"


class Shutdown(Exception):
    """Raised in an idle reader when the server is stopping."""


class ConnectionLimits:
    """Open connections of one server process: in total and per client address."""

    def __init__(self, *, max_total: int, max_per_ip: int) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self.per_ip: Counter[str] = Counter()

    def admit(self, ip: str) -> bytes | None:
        """Take a slot and return None, or return the refusal to send."""
        if self.total >= self.max_total:
            return TOO_MANY_CONNECTIONS
        if self.per_ip[ip] >= self.max_per_ip:
            return TOO_MANY_CONNECTIONS_IP
        self.total += 1
        self.per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self.total -= 1
        self.per_ip[ip] -= 1
        if self.per_ip[ip] <= 0:
            del self.per_ip[ip]


class Pop3Connection(asyncio.Protocol):
    """Buffers input lines and output bytes for one client; flow control both ways.

    ``on_open`` is called once the connection holds a slot in ``limits``; the server starts
    the session task there.
    """

    def __init__(
        self,
        *,
        limits: ConnectionLimits,
        idle_timeout: float,
        implicit_tls: bool,
        on_open: Callable[[Pop3Connection], None],
    ) -> None:
        self._limits = limits
        self._on_open = on_open
        self.implicit_tls = implicit_tls
        self.transport: asyncio.Transport | None = None
        self._in = bytearray()
        self._out = bytearray()
        self._skipping_overlong = False
        self._reading_paused = False
        self._eof = False
        self._lost = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self.idle = False
        self.peer_ip = "unknown"
        # One idle timer per connection, re-armed only when it fires (at most once per idle
        # period): a timer per command line would be created and cancelled on every RETR.
        self._idle_timeout = idle_timeout
        self._wait_started = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self.counted = False  # holds a slot in the connection limits

    # ------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = typing.cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer_ip = str(peer[0])
        refusal = self._limits.admit(self.peer_ip)
        if refusal is not None:
            log.warning("POP3 connection limit reached, refusing %s", self.peer_ip)
            # Nothing was read: answer and close without starting a session.
            transport.write(refusal)
            transport.close()
            self._lost = True
            return
        self.counted = True
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._on_open(self)

    def data_received(self, data: bytes) -> None:
        if self._skipping_overlong:
            newline = data.find(b"\n")
            if newline < 0:
                return
            data = data[newline + 1 :]
            self._skipping_overlong = False
        self._in += data
        if len(self._in) > READ_BUFFER_LIMIT and self.transport and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool | None:
        self._eof = True
        self._wake()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel_idle_timer()
        if self.counted:
            self.counted = False
            self._limits.release(self.peer_ip)
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # ------------------------------------------------------------- used by the server
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def interrupt(self) -> None:
        """Wake an idle reader so it notices the server is stopping."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(Shutdown())

    @property
    def closed(self) -> bool:
        return self._lost

    def has_line(self) -> bool:
        return b"\n" in self._in or len(self._in) > MAX_LINE_BUFFER

    async def readline(self, timeout: float) -> bytes | None:
        """The next line (CRLF included), an over-long prefix, or None at end of input."""
        while True:
            newline = self._in.find(b"\n")
            if newline >= 0:
                line = bytes(self._in[: newline + 1])
                del self._in[: newline + 1]
                self._maybe_resume_reading()
                return line
            if len(self._in) > MAX_LINE_BUFFER:
                # Keep a prefix for the session to refuse; drop the rest up to the next LF.
                line = bytes(self._in[:MAX_LINE_BUFFER])
                self._in.clear()
                self._skipping_overlong = True
                self._maybe_resume_reading()
                return line
            if self._eof or self._lost:
                return None
            loop = asyncio.get_running_loop()
            self._idle_timeout = timeout
            self._wait_started = loop.time()
            if self._idle_timer is None:
                self._idle_timer = loop.call_at(self._wait_started + timeout, self._idle_check)
            self._waiter = loop.create_future()
            self.idle = True
            try:
                await self._waiter
            finally:
                self.idle = False
                self._waiter = None

    def _idle_check(self) -> None:
        """Timer callback: time out a reader idle for the whole period, else re-arm."""
        loop = asyncio.get_running_loop()
        self._idle_timer = None
        if self._lost:
            return
        waiting = self._waiter is not None and not self._waiter.done()
        due = (self._wait_started if waiting else loop.time()) + self._idle_timeout
        if waiting and due <= loop.time():
            assert self._waiter is not None
            self._waiter.set_exception(TimeoutError())
            return
        self._idle_timer = loop.call_at(due, self._idle_check)

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _maybe_resume_reading(self) -> None:
        if self._reading_paused and len(self._in) < READ_BUFFER_LIMIT // 2 and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()

    def discard_input(self) -> None:
        self._in.clear()
        self._skipping_overlong = False

    async def start_tls(self, context: ssl.SSLContext, *, timeout: float) -> None:
        """Flush the replies queued so far, then negotiate TLS as the server."""
        assert self.transport is not None
        await self.flush(timeout)
        # RFC 2595 section 4 / CVE-2011-0411: nothing sent in plaintext before the handshake
        # may be taken as a command sent after it.  No await between this and start_tls():
        # from there on the TLS layer gets every byte, and plaintext that still arrives is
        # not TLS and fails the handshake.
        self.discard_input()
        loop = asyncio.get_running_loop()
        new_transport = await loop.start_tls(
            self.transport,
            self,
            context,
            server_side=True,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
        )
        if new_transport is None:
            raise ConnectionError("TLS negotiation failed")
        new_transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        self.transport = new_transport
        # Not discarded again: what arrived by now came through TLS, and a client may send its
        # first command in the same segment as its Finished (GnuTLS does).

    def queue(self, data: bytes) -> None:
        self._out += data

    @property
    def queued(self) -> int:
        return len(self._out)

    async def flush(self, timeout: float) -> None:
        if self._out and self.transport is not None and not self._lost:
            self.transport.write(bytes(self._out))
        self._out.clear()
        await self.drain(timeout)

    def write(self, data: bytes | bytearray) -> None:
        if self.transport is not None and not self._lost:
            self.transport.write(data)

    async def drain(self, timeout: float) -> None:
        if not self._write_paused or self._lost:
            return
        self._drain_waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await self._drain_waiter
        finally:
            self._drain_waiter = None

    def close(self) -> None:
        self._cancel_idle_timer()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
