"""The asyncio adapter: sockets, TLS, login, maildrop lock and message streaming for POP3.

The protocol itself lives in ``session.py`` and never does I/O; this module feeds it lines and
carries out the events it returns.  Blocking work (database, password hashing, opening large
files) runs in worker threads; small messages are read on the loop thread because measuring
showed that a page-cached 4 KiB read costs less than handing it to a thread, and blocks of large
messages are read on the loop thread only when the kernel can serve them from the page cache
without waiting (preadv RWF_NOWAIT), otherwise in a thread (see ``_stream_retr`` and
bench/pop3_download.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import ssl
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.errors import MailhostError, TemporaryError
from app.maildir import MailboxRef, MaildirError, MaildirStore, MessageInfo
from app.services import accounts, stats, throttle
from app.tls import server_context
from pop3_service.encoding import BLOCK_SIZE, WireEncoder, encode_whole, iter_top
from pop3_service.locking import DEFAULT_LEASE_SECONDS, LeaseLost, MaildropLocks
from pop3_service.session import (
    MAX_LINE_BUFFER,
    Authenticate,
    AuthFailure,
    Close,
    Event,
    Expunge,
    Pop3Session,
    Reply,
    SendMessage,
    StartTls,
    State,
)

log = logging.getLogger(__name__)

# Messages up to this wire size are read and encoded in one go on the loop thread.
SMALL_MESSAGE = 128 * 1024
# Stop reading from a client that pipelines more than this without reading our replies.
READ_BUFFER_LIMIT = 256 * 1024
# Transport write buffer high-water mark: bounds memory per connection while streaming.
WRITE_BUFFER_HIGH = 1024 * 1024
# Flush pipelined replies once this much is queued even if more commands are waiting.
FLUSH_THRESHOLD = 256 * 1024
TLS_HANDSHAKE_TIMEOUT = 30.0
# The longest plausible address (RFC 5321 section 4.5.3.1: 64 + 1 + 255).
MAX_USERNAME = 320
# Sent instead of the greeting when a connection limit is reached.  RFC 3206 section 4:
# [SYS/TEMP] is a temporary system problem, worth trying again later, so a client retries
# without asking the user anything.  Not [IN-USE] (RFC 2449 section 8.1.1): that says the
# *maildrop* is locked, which tells users their mail is being read elsewhere.  RFC 1939 has
# no -ERR greeting, but clients treat any -ERR as "cannot connect" (Dovecot does the same).
TOO_MANY_CONNECTIONS = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
TOO_MANY_CONNECTIONS_IP = b"-ERR [SYS/TEMP] Too many connections from your address\r\n"


@dataclass(frozen=True, slots=True)
class SnapshotEntry:
    """One message of a login snapshot: what the session sees, plus where it is."""

    uid: str
    size: int
    info: MessageInfo


@dataclass(slots=True)
class MaildirMaildrop:
    """The maildrop handed to the session after login (the session reads only ``messages``)."""

    mailbox_id: int
    ref: MailboxRef
    messages: list[SnapshotEntry]


class _Shutdown(Exception):
    pass


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


class _Connection(asyncio.Protocol):
    """Buffers input lines and output bytes for one client; flow control both ways."""

    def __init__(self, server: Pop3Server, *, implicit_tls: bool) -> None:
        self._server = server
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
        # period), instead of an asyncio.timeout per command: profiling showed creating and
        # cancelling a timer for every command line was a tenth of the loop's work per RETR.
        self._idle_timeout = server.settings.pop3_idle_timeout
        self._wait_started = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self.counted = False  # holds a slot in the server's connection limits

    # ------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer_ip = str(peer[0])
        refusal = self._server.limits.admit(self.peer_ip)
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
        self._server._spawn(self)

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
            self._server.limits.release(self.peer_ip)
        self._wake()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # ------------------------------------------------------------- used by the handler
    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def interrupt(self) -> None:
        """Wake an idle reader so it notices the server is stopping."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(_Shutdown())

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


@dataclass(slots=True)
class _Context:
    conn: _Connection
    session: Pop3Session
    maildrop: MaildirMaildrop | None = None


_RWF_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


def _read_cached(fd: int, buffer: bytearray, offset: int) -> int | None:
    """Bytes read into ``buffer`` from the page cache without blocking, or None when the
    data is not cached (or the platform or file system cannot tell): read it in a thread."""
    global _RWF_NOWAIT
    if _RWF_NOWAIT is None:
        return None
    try:
        return os.preadv(fd, [buffer], offset, _RWF_NOWAIT)
    except BlockingIOError:
        return None
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            _RWF_NOWAIT = None  # not supported here: always use the thread from now on
            return None
        raise


def _plausible(text: str, *, limit: int) -> bool:
    """False for strings no mailbox login can contain (control characters, broken UTF-8)."""
    if not text or len(text) > limit:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # surrogate-escaped bytes that were not UTF-8
        return False
    return not any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


class Pop3Server:
    """The POP3 listener(s): plain port with STLS, and implicit TLS when configured."""

    def __init__(
        self,
        settings: Settings,
        *,
        session_factory: sessionmaker[Session],
        store: MaildirStore,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        shutdown_deadline: float = 10.0,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.store = store
        self.locks = MaildropLocks(session_factory, lease_seconds=lease_seconds)
        self.throttle_policy = throttle.ThrottlePolicy.from_settings(settings)
        self.shutdown_deadline = shutdown_deadline
        self.tls_context: ssl.SSLContext | None = server_context(settings)
        self.limits = ConnectionLimits(
            max_total=settings.pop3_max_connections,
            max_per_ip=settings.pop3_max_connections_per_ip,
        )
        self._servers: list[asyncio.Server] = []
        self._ports: dict[str, int] = {}
        self._tasks: dict[asyncio.Task[None], _Connection] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        s = self.settings
        plain = await loop.create_server(
            lambda: _Connection(self, implicit_tls=False),
            host=s.pop3_host,
            port=s.pop3_port,
            reuse_port=True,
            start_serving=True,
        )
        self._servers.append(plain)
        self._ports["pop3"] = plain.sockets[0].getsockname()[1]
        if s.pop3s_port is not None and self.tls_context is not None:
            secure = await loop.create_server(
                lambda: _Connection(self, implicit_tls=True),
                host=s.pop3_host,
                port=s.pop3s_port,
                reuse_port=True,
                ssl=self.tls_context,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
                start_serving=True,
            )
            self._servers.append(secure)
            self._ports["pop3s"] = secure.sockets[0].getsockname()[1]
        self._heartbeat = asyncio.create_task(self._renew_leases())
        log.info("POP3 listening on %s", self._ports)

    @property
    def port(self) -> int:
        return self._ports["pop3"]

    @property
    def ports(self) -> dict[str, int]:
        """{"pop3": port, "pop3s": port (only with implicit TLS)}."""
        return dict(self._ports)

    async def stop(self) -> None:
        """Stop accepting; idle sessions are told and closed at once (deleting nothing), busy
        ones finish their command; whatever is left at the deadline is cancelled."""
        self._stopping = True
        for server in self._servers:
            server.close()
        for conn in list(self._tasks.values()):
            if conn.idle:
                conn.interrupt()
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=self.shutdown_deadline)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for server in self._servers:
            await server.wait_closed()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.locks.renew_interval)
            try:
                lost = await asyncio.to_thread(self.locks.renew_all)
            except Exception:  # database briefly down: try again next period
                log.exception("renewing POP3 maildrop leases failed")
                continue
            if lost:
                # Those sessions cannot expunge any more (confirm() fails at QUIT).
                log.warning("POP3 maildrop leases lost for mailboxes %s", sorted(lost))

    # ------------------------------------------------------------------ connections
    def _spawn(self, conn: _Connection) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(conn))
        self._tasks[task] = conn
        task.add_done_callback(self._tasks.pop)

    async def _handle(self, conn: _Connection) -> None:
        s = self.settings
        session = Pop3Session(
            hostname=s.hostname,
            tls_available=self.tls_context is not None,
            tls_active=conn.implicit_tls,
            require_tls=s.pop3_require_tls,
            max_unknown_commands=s.pop3_max_unknown_commands,
        )
        ctx = _Context(conn=conn, session=session)
        timeout = s.pop3_idle_timeout
        try:
            await self._dispatch(ctx, session.greeting())
            while session.state is not State.CLOSED and not conn.closed:
                if self._stopping:
                    await self._dispatch(ctx, session.shutting_down())
                    break
                if conn.queued and (not conn.has_line() or conn.queued >= FLUSH_THRESHOLD):
                    await conn.flush(timeout)
                try:
                    line = await conn.readline(timeout)
                except TimeoutError:
                    await self._dispatch(ctx, session.timed_out())
                    break
                except _Shutdown:
                    await self._dispatch(ctx, session.shutting_down())
                    break
                if line is None:
                    break
                await self._dispatch(ctx, session.receive_line(line))
            await conn.flush(timeout)
        except (TimeoutError, ConnectionError, ssl.SSLError) as exc:
            log.info("POP3 connection from %s ended: %r", conn.peer_ip, exc)
        except asyncio.CancelledError:
            log.info("POP3 connection from %s cancelled at shutdown", conn.peer_ip)
        except Exception:
            log.exception("POP3 session from %s failed", conn.peer_ip)
        finally:
            # Whatever happened, nothing was expunged unless QUIT asked for it.
            session.connection_lost()
            conn.close()
            if ctx.maildrop is not None:
                await self._release(ctx.maildrop.mailbox_id)

    async def _release(self, mailbox_id: int) -> None:
        try:
            await asyncio.shield(asyncio.to_thread(self.locks.release, mailbox_id))
        except Exception:  # the lease lapses by itself
            log.exception("releasing the POP3 lease of mailbox %s failed", mailbox_id)

    async def _dispatch(self, ctx: _Context, events: list[Event]) -> None:
        conn = ctx.conn
        timeout = self.settings.pop3_idle_timeout
        for event in events:
            if isinstance(event, Reply):
                conn.queue(event.data)
            elif isinstance(event, SendMessage):
                await self._send_message(ctx, event)
            elif isinstance(event, Authenticate):
                await conn.flush(timeout)
                await self._dispatch(ctx, await self._login(ctx, event))
            elif isinstance(event, Expunge):
                await self._dispatch(ctx, await self._expunge(ctx, event))
            elif isinstance(event, StartTls):
                await self._start_tls(ctx)
            elif isinstance(event, Close):
                # Give the lease back before the client sees the final reply, so a client
                # that reconnects at once after "+OK" is not told [IN-USE].
                if ctx.maildrop is not None:
                    mailbox_id, ctx.maildrop = ctx.maildrop.mailbox_id, None
                    await self._release(mailbox_id)
                await conn.flush(timeout)
                conn.close()

    # ------------------------------------------------------------------ login
    async def _login(self, ctx: _Context, event: Authenticate) -> list[Event]:
        session = ctx.session
        try:
            # Reserved (and committed) before the password is checked, so parallel guesses
            # count while in flight; over budget, refused at once (app/services/throttle.py).
            ticket = await asyncio.to_thread(self._reserve, ctx.conn.peer_ip, event.username)
        except (TemporaryError, SQLAlchemyError):
            log.exception("POP3 login throttle failed on the server side")
            return session.auth_failed(AuthFailure.TEMPORARY)
        if isinstance(ticket, throttle.Refused):
            log.info(
                "POP3 login from %s refused: %s over its failed-login budget",
                ctx.conn.peer_ip,
                ticket.reason,
            )
            return session.auth_failed(AuthFailure.THROTTLED)
        try:
            outcome = await asyncio.to_thread(
                self._login_blocking, event.username, event.password, ticket
            )
        except (TemporaryError, SQLAlchemyError, OSError, MaildirError):
            log.exception("POP3 login failed on the server side")
            return session.auth_failed(AuthFailure.TEMPORARY)
        if isinstance(outcome, AuthFailure):
            return session.auth_failed(outcome)
        if ctx.conn.closed:  # client went away meanwhile: give the lease back at once
            await self._release(outcome.mailbox_id)
            return session.auth_failed(AuthFailure.TEMPORARY)
        ctx.maildrop = outcome  # from here on, _handle gives the lease back whatever happens
        # Counted only now that the session enters TRANSACTION: a login answered [IN-USE] or
        # [SYS/TEMP] is not a POP3 login for the portal's statistics.
        try:
            await asyncio.to_thread(self._count_login)
        except (TemporaryError, SQLAlchemyError):
            # A statistics counter is not worth refusing someone their mail.
            log.exception("counting a POP3 login failed")
        return session.auth_succeeded(outcome, username=event.username)

    def _count_login(self) -> None:
        with transaction(self.session_factory) as db:
            stats.bump(db, metric="pop3_logins")

    def _reserve(self, ip: str, username: str) -> throttle.Ticket | throttle.Refused:
        with transaction(self.session_factory) as db:
            return throttle.reserve(
                db, door="pop3", address=ip, account=username, policy=self.throttle_policy
            )

    def _settle_unchecked(self, ticket: throttle.Ticket) -> None:
        # The server failed, not the client: give the charge back (if the database is down
        # too, the charge drains like a failure; see app/services/throttle.py).
        try:
            with transaction(self.session_factory) as db:
                throttle.settle(
                    db,
                    ticket=ticket,
                    outcome=throttle.Outcome.UNCHECKED,
                    policy=self.throttle_policy,
                )
        except (TemporaryError, SQLAlchemyError):
            log.exception("returning a POP3 login throttle charge failed")

    def _login_blocking(
        self, username: str, password: str, ticket: throttle.Ticket
    ) -> MaildirMaildrop | AuthFailure:
        found: tuple[int, MailboxRef] | None = None
        if _plausible(username, limit=MAX_USERNAME) and _plausible(password, limit=1024):
            try:
                with transaction(self.session_factory) as db:
                    mailbox = accounts.authenticate_mailbox(
                        db, address=username.strip(), password=password
                    )
                    if mailbox is not None:
                        found = (
                            mailbox.id,
                            MailboxRef(domain=mailbox.domain.name, local_part=mailbox.local_part),
                        )
                        throttle.settle(
                            db,
                            ticket=ticket,
                            outcome=throttle.Outcome.SUCCESS,
                            policy=self.throttle_policy,
                        )
            except (TemporaryError, SQLAlchemyError):
                self._settle_unchecked(ticket)  # no verdict reached: not a guess
                raise
            except MailhostError:  # e.g. ValidationError on a malformed address
                found = None
        if found is None:
            # The charge taken by _reserve is the failure: nothing more to write.
            return AuthFailure.BAD_CREDENTIALS
        mailbox_id, ref = found
        if not self.locks.acquire(mailbox_id):
            return AuthFailure.IN_USE
        try:
            messages = [
                SnapshotEntry(uid=m.uid, size=self.store.wire_size(m), info=m)
                for m in self.store.list_messages(ref)
            ]
        except BaseException:
            self.locks.release(mailbox_id)
            raise
        return MaildirMaildrop(mailbox_id=mailbox_id, ref=ref, messages=messages)

    # ------------------------------------------------------------------ STLS
    async def _start_tls(self, ctx: _Context) -> None:
        conn = ctx.conn
        assert self.tls_context is not None and conn.transport is not None
        await conn.flush(self.settings.pop3_idle_timeout)
        # RFC 2595 section 4 / CVE-2011-0411: nothing sent before the handshake may be taken
        # as a command sent after it.
        conn.discard_input()
        loop = asyncio.get_running_loop()
        new_transport = await loop.start_tls(
            conn.transport,
            conn,
            self.tls_context,
            server_side=True,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT,
        )
        if new_transport is None:
            raise ConnectionError("TLS negotiation failed")
        new_transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        conn.transport = new_transport
        conn.discard_input()
        ctx.session.tls_started()

    # ------------------------------------------------------------------ RETR / TOP
    async def _send_message(self, ctx: _Context, event: SendMessage) -> None:
        assert ctx.maildrop is not None
        conn = ctx.conn
        timeout = self.settings.pop3_idle_timeout
        entry = ctx.maildrop.messages[event.index]
        crlf_source = entry.info.wire_size is None
        if event.body_lines is None and entry.size <= SMALL_MESSAGE:
            try:
                with self.store.open_message(entry.info) as fh:
                    data = fh.read()
            except (OSError, MaildirError):
                conn.queue(event.unavailable)
                return
            conn.queue(event.status)
            conn.queue(encode_whole(data, crlf_source=crlf_source))
            if conn.queued >= FLUSH_THRESHOLD:
                await conn.flush(timeout)
            return
        try:
            fh = await asyncio.to_thread(self.store.open_message, entry.info)
        except (OSError, MaildirError):
            conn.queue(event.unavailable)
            return
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[bytes | None] | None = None
        try:
            conn.queue(event.status)
            await conn.flush(timeout)
            if event.body_lines is None:
                await self._stream_retr(conn, fh, crlf_source=crlf_source, timeout=timeout)
            else:
                # TOP is line-oriented and rare: read and encode in the thread.
                chunks: Iterator[bytes] = iter_top(fh, event.body_lines, crlf_source=crlf_source)
                pending = loop.run_in_executor(None, next, chunks, None)
                while True:
                    chunk = await pending
                    pending = None
                    if chunk is None:
                        break
                    pending = loop.run_in_executor(None, next, chunks, None)
                    conn.write(chunk)
                    await conn.drain(timeout)
                    if conn.closed:
                        raise ConnectionError("client went away during TOP")
        finally:
            if pending is not None:
                with contextlib.suppress(Exception):
                    await pending
            fh.close()

    async def _stream_retr(
        self, conn: _Connection, fh: BinaryIO, *, crlf_source: bool, timeout: float
    ) -> None:
        """RETR of a large message: read a block, encode it, write it, respect flow control.

        Blocks already in the page cache are read on the loop thread with RWF_NOWAIT (Linux
        preadv2: the kernel answers EAGAIN instead of going to disk, so the loop never waits
        on a disk).  Measured: a 256 KiB cached read costs ~20 us, a thread round trip per
        block cost more than that and made the reader and the encoder fight for the GIL
        (bench/pop3_download.py: server CPU per 1 MiB message ~2,100 -> ~1,600 us).  A block
        that is not cached is read in a worker thread as before.  Blocks of 256 KiB stay in
        the CPU cache through the three passes of the encoder; 1 MiB blocks measured slower.
        """
        loop = asyncio.get_running_loop()
        encoder = WireEncoder(crlf_source=crlf_source)
        fd = fh.fileno()
        buffer = bytearray(BLOCK_SIZE)
        offset = 0
        pending: asyncio.Future[int] | None = None
        try:
            while True:
                n = _read_cached(fd, buffer, offset)
                if n is None:
                    pending = loop.run_in_executor(None, os.preadv, fd, [buffer], offset)
                    n = await pending
                    pending = None
                if n == 0:
                    break
                offset += n
                # The encoder never returns the buffer itself (every path makes new bytes),
                # so refilling it below cannot change what the transport still holds.
                conn.write(encoder.feed(buffer if n == BLOCK_SIZE else buffer[:n]))
                await conn.drain(timeout)
                if conn.closed:
                    raise ConnectionError("client went away during RETR")
            conn.write(encoder.finish())
        finally:
            if pending is not None:
                # Cancelled mid-read: let the thread finish with the buffer and the fd first.
                with contextlib.suppress(Exception):
                    await pending

    # ------------------------------------------------------------------ QUIT
    async def _expunge(self, ctx: _Context, event: Expunge) -> list[Event]:
        assert ctx.maildrop is not None
        maildrop = ctx.maildrop
        try:
            # Still ours?  A session whose lease lapsed must not delete (another may be live).
            await asyncio.to_thread(self.locks.confirm, maildrop.mailbox_id)
            wanted = set(event.uids)
            doomed = [m.info for m in maildrop.messages if m.uid in wanted]
            removed = await asyncio.to_thread(self.store.expunge, maildrop.ref, doomed)
        except (LeaseLost, OSError, MaildirError, SQLAlchemyError, TemporaryError):
            log.exception("POP3 expunge failed for mailbox %s", maildrop.mailbox_id)
            return ctx.session.expunge_failed()
        return ctx.session.expunge_succeeded(removed)
