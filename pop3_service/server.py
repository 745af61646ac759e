"""The POP3 server: listeners, session lifecycle and dispatch of the session's events.

The protocol lives in ``session.py`` and never does I/O; the buffered connection in
``connection.py``; login, lock and snapshot in ``maildrop.py``; RETR/TOP streaming in
``transfer.py``.  This module feeds the session lines and carries out the events it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass, field

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app import hourly, metrics
from app.config import Settings
from app.errors import TemporaryError
from app.maildir import MaildirError, MaildirStore
from app.services import throttle
from app.tls import server_context
from app.tracking import Event as TrackedEvent
from app.tracking import EventWriter
from pop3_service import memory
from pop3_service.connection import (
    FLUSH_THRESHOLD,
    TLS_HANDSHAKE_TIMEOUT,
    ConnectionLimits,
    Pop3Connection,
    Shutdown,
)
from pop3_service.locking import DEFAULT_LEASE_SECONDS, LeaseLost, MaildropLocks
from pop3_service.maildrop import MaildirMaildrop, Maildrops
from pop3_service.session import (
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
from pop3_service.transfer import send_message

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Context:
    conn: Pop3Connection
    session: Pop3Session
    maildrop: MaildirMaildrop | None = None
    # Recorded once the replies are written (off the reply path): tracking events of RETRs
    # and of the QUIT's deletions, and the session's RETR totals for the metrics.
    tracked: list[tuple[str, str]] = field(default_factory=list)  # (kind, uid)
    retrieved: int = 0
    retrieved_octets: int = 0
    mailbox: str | None = None  # the address, for tracking (kept after the lease is given back)
    big: bool = False  # a snapshot of memory.BIG_SESSION messages or more: trim at the end


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
        self.locks = MaildropLocks(
            session_factory, lease_seconds=lease_seconds, mode=settings.pop3_maildrop_lock
        )
        self.maildrops = Maildrops(
            session_factory=session_factory,
            store=store,
            locks=self.locks,
            throttle_policy=throttle.ThrottlePolicy.from_settings(settings),
        )
        self.shutdown_deadline = shutdown_deadline
        self.tls_context: ssl.SSLContext | None = server_context(settings)
        self.limits = ConnectionLimits(
            max_total=settings.pop3_max_connections,
            max_per_ip=settings.pop3_max_connections_per_ip,
        )
        self._servers: list[asyncio.Server] = []
        self._ports: dict[str, int] = {}
        self._tasks: dict[asyncio.Task[None], Pop3Connection] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = False
        self.tracking = EventWriter.from_settings(settings, session_factory)

    # ------------------------------------------------------------------ lifecycle
    def _connection(self, *, implicit_tls: bool) -> Pop3Connection:
        return Pop3Connection(
            limits=self.limits,
            idle_timeout=self.settings.pop3_idle_timeout,
            implicit_tls=implicit_tls,
            on_open=self._spawn,
        )

    async def start(self) -> None:
        memory.tune_allocator()
        loop = asyncio.get_running_loop()
        s = self.settings
        plain = await loop.create_server(
            lambda: self._connection(implicit_tls=False),
            host=s.pop3_host,
            port=s.pop3_port,
            reuse_port=True,
            start_serving=True,
        )
        self._servers.append(plain)
        self._ports["pop3"] = plain.sockets[0].getsockname()[1]
        if s.pop3s_port is not None and self.tls_context is not None:
            secure = await loop.create_server(
                lambda: self._connection(implicit_tls=True),
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
        self.tracking.start()
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
        await asyncio.to_thread(self.tracking.stop)

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
    def _spawn(self, conn: Pop3Connection) -> None:
        task = asyncio.get_running_loop().create_task(self._handle(conn))
        self._tasks[task] = conn
        task.add_done_callback(self._tasks.pop)

    async def _handle(self, conn: Pop3Connection) -> None:
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
        metrics.connection_opened("pop3")
        try:
            await self._dispatch(ctx, session.greeting())
            while session.state is not State.CLOSED and not conn.closed:
                if self._stopping:
                    await self._dispatch(ctx, session.shutting_down())
                    break
                if conn.queued and (not conn.has_line() or conn.queued >= FLUSH_THRESHOLD):
                    await conn.flush(timeout)
                if ctx.tracked and not conn.queued:  # their replies are written
                    self._record_tracked(ctx)
                try:
                    line = await conn.readline(timeout)
                except TimeoutError:
                    await self._dispatch(ctx, session.timed_out())
                    break
                except Shutdown:
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
            metrics.connection_closed("pop3")
            if ctx.maildrop is not None:
                await self._release(ctx.maildrop)
                ctx.maildrop = None
            self._record_tracked(ctx)
            if ctx.retrieved:
                metrics.pop3_retrieved(ctx.retrieved_octets, messages=ctx.retrieved)
                hourly.add("retrieved", ctx.retrieved)
            if ctx.big:
                # Once this task has ended (its snapshot and replies are garbage by then).
                loop = asyncio.get_running_loop()
                loop.call_soon(loop.run_in_executor, None, memory.give_back)

    async def _release(self, maildrop: MaildirMaildrop) -> None:
        try:
            await asyncio.shield(asyncio.to_thread(maildrop.release))
        except Exception:  # the lease lapses by itself
            log.exception("releasing the POP3 lease of mailbox %s failed", maildrop.mailbox_id)

    async def _dispatch(self, ctx: _Context, events: list[Event]) -> None:
        conn = ctx.conn
        timeout = self.settings.pop3_idle_timeout
        for event in events:
            if isinstance(event, Reply):
                conn.queue(event.data)
            elif isinstance(event, SendMessage):
                assert ctx.maildrop is not None
                sent = await send_message(conn, ctx.maildrop, event, timeout=timeout)
                if sent and event.body_lines is None:  # RETR, not TOP
                    ctx.tracked.append(("retrieved", event.uid))
                    ctx.retrieved += 1
                    ctx.retrieved_octets += ctx.maildrop.messages.listing.wires[event.index]
            elif isinstance(event, Authenticate):
                await conn.flush(timeout)
                await self._dispatch(ctx, await self._login(ctx, event))
            elif isinstance(event, Expunge):
                await self._dispatch(ctx, await self._expunge(ctx, event))
            elif isinstance(event, StartTls):
                assert self.tls_context is not None
                await conn.start_tls(self.tls_context, timeout=timeout)
                ctx.session.tls_started()
            elif isinstance(event, Close):
                # Give the lease back before the client sees the final reply, so a client
                # that reconnects at once after "+OK" is not told [IN-USE].
                if ctx.maildrop is not None:
                    maildrop, ctx.maildrop = ctx.maildrop, None
                    await self._release(maildrop)
                await conn.flush(timeout)
                conn.close()

    # ------------------------------------------------------------------ login
    async def _login(self, ctx: _Context, event: Authenticate) -> list[Event]:
        session = ctx.session
        peer_ip = ctx.conn.peer_ip
        try:
            # Reserved (and committed) before the password is checked, so parallel guesses
            # count while in flight; over budget, refused at once (app/services/throttle.py).
            ticket = await asyncio.to_thread(
                self.maildrops.reserve, peer_ip=peer_ip, username=event.username
            )
        except (TemporaryError, SQLAlchemyError):
            log.exception("POP3 login throttle failed on the server side")
            metrics.pop3_login("temporary")
            return session.auth_failed(AuthFailure.TEMPORARY)
        if isinstance(ticket, throttle.Refused):
            log.info(
                "POP3 login from %s refused: %s over its failed-login budget",
                peer_ip,
                ticket.reason,
            )
            metrics.pop3_login("throttled")
            return session.auth_failed(AuthFailure.THROTTLED)
        try:
            outcome = await asyncio.to_thread(
                self.maildrops.login,
                username=event.username,
                password=event.password,
                ticket=ticket,
            )
        except (TemporaryError, SQLAlchemyError, OSError, MaildirError):
            log.exception("POP3 login failed on the server side")
            metrics.pop3_login("temporary")
            return session.auth_failed(AuthFailure.TEMPORARY)
        if isinstance(outcome, AuthFailure):
            metrics.pop3_login("failed" if outcome is AuthFailure.BAD_CREDENTIALS else "temporary")
            return session.auth_failed(outcome)
        if ctx.conn.closed:  # client went away meanwhile: give the lease back at once
            await self._release(outcome)
            return session.auth_failed(AuthFailure.TEMPORARY)
        metrics.pop3_login("ok")
        ctx.maildrop = outcome  # from here on, _handle gives the lease back whatever happens
        ctx.mailbox = f"{outcome.ref.local_part}@{outcome.ref.domain}"
        ctx.big = len(outcome.messages) >= memory.BIG_SESSION
        # Counted only now that the session enters TRANSACTION: a login answered [IN-USE] or
        # [SYS/TEMP] is not a POP3 login for the portal's statistics.
        try:
            await asyncio.to_thread(self.maildrops.count_login)
        except (TemporaryError, SQLAlchemyError):
            # A statistics counter is not worth refusing someone their mail.
            log.exception("counting a POP3 login failed")
        return session.auth_succeeded(outcome, username=event.username)

    # ------------------------------------------------------------------ QUIT
    async def _expunge(self, ctx: _Context, event: Expunge) -> list[Event]:
        assert ctx.maildrop is not None
        maildrop = ctx.maildrop
        try:
            removed = await asyncio.to_thread(maildrop.expunge, event.indexes)
        except (LeaseLost, OSError, MaildirError, SQLAlchemyError, TemporaryError):
            log.exception("POP3 expunge failed for mailbox %s", maildrop.mailbox_id)
            return ctx.session.expunge_failed()
        ctx.tracked += [("deleted", uid) for uid in event.uids]
        return ctx.session.expunge_succeeded(removed)

    def _record_tracked(self, ctx: _Context) -> None:
        """Hand the events noted since the last write to the tracking writer."""
        tracked, ctx.tracked = ctx.tracked, []
        if not tracked or ctx.mailbox is None:
            return
        for kind, uid in tracked:
            self.tracking.record(
                TrackedEvent(
                    kind=kind,
                    service="pop3",
                    client_ip=ctx.conn.peer_ip,
                    mailbox=ctx.mailbox,
                    message_key=uid,
                    stage="RETR" if kind == "retrieved" else "QUIT",
                    reply="+OK",
                )
            )
