"""Recipient policy and delivery: aiosmtpd handler hooks that decide replies, never do I/O on
the socket, and run database and file work off the event loop.

Address policy decisions (written down as the brief asks):

* Domains are matched case-insensitively (``USER@HOSTED.EXAMPLE`` is delivered).
* A trailing-dot domain (``user@hosted.example.``) is not RFC 5321 syntax (section 4.1.2,
  ``Domain`` has no final dot); aiosmtpd's address parser refuses it, and we answer
  ``553 5.1.3`` (bad address syntax) rather than guessing. It is never relayed.
* Source routes (``<@hosted.example:user@foreign.example>``) are ignored as RFC 5321 section
  4.1.1.3 / appendix C says: the address is ``user@foreign.example``, i.e. relay -> 554 5.7.1.
* ``%`` / ``!`` hacks, quoted local parts and address literals are never hosted addresses:
  554 5.7.1 without asking the database.
* ``<Postmaster>`` without a domain (any case) is the platform postmaster (RFC 5321 sections
  4.1.1.3 and 4.5.1: it MUST be accepted), ``Settings.postmaster_address``; without one it is
  ``550 5.1.1`` saying that no postmaster mailbox is configured. aiosmtpd's parser also maps
  ``< Postmaster>``, ``<"Postmaster">`` and ``<@relay:Postmaster>`` to ``Postmaster``; those
  are taken as the same (liberal in what we accept; none of them can reach a foreign host).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import email.utils
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

from aiosmtpd.smtp import Session as SmtpSession
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app import hourly, metrics, quota_warnings
from app.config import Settings
from app.db import transaction
from app.errors import TemporaryError
from app.maildir import MailboxRef, MaildirStore
from app.maildir_stream import SpooledBody, deliver_spooled, spool_body
from app.services import stats
from app.services.resolution import (
    POSTMASTER,
    Resolution,
    Target,
    Verdict,
    existing_mailbox_ids,
    resolve_recipient,
)
from smtp_ingress import replies
from smtp_ingress.envelope import IngressEnvelope, ServerLike, Transaction

log = logging.getLogger("smtp_ingress")
T = TypeVar("T")


def _has_control(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


def _peer_ip(session: SmtpSession) -> str:
    peer = getattr(session, "peer", None)
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "unknown"


def _relay_trick(address: str) -> bool:
    local, _, domain = address.rpartition("@")
    return (
        not local
        or not domain
        or any(ch in local for ch in '%!"@:')
        or domain.startswith("[")
        or _has_control(address)
    )


# Entries of the per-process resolution cache (``smtp_resolution_cache_seconds``): a recipient
# lookup is several queries plus a Maildir scan for quota; reusing it briefly means a
# suspension, new alias or a mailbox filling up takes effect up to that long later (quota is
# racy between concurrent deliveries anyway). Past this many entries the cache starts afresh.
_RESOLUTION_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class TransactionLogLine:
    """The fields of the one log line per transaction (formatted only when written)."""

    queue_id: str
    client: str
    helo: str | None
    sender: str
    recipients: str
    copies: int
    size: int
    result: str

    def write(self) -> None:
        log.info(
            "qid=%s client=%s helo=%s from=<%s> to=%s copies=%d size=%d result=%s",
            self.queue_id,
            self.client,
            self.helo,
            self.sender,
            self.recipients,
            self.copies,
            self.size,
            self.result,
        )


class QueueIds:
    """Queue ids like Postfix's: unique per process from a counter, not a system call per
    message. A random prefix per process keeps the ids of worker processes sharing a port
    apart in the logs."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(3).upper()
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFF:06X}"


class ReceivedDate:
    """The RFC 5322 date for Received headers, formatted once per second, not per copy."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._second = -1
        self._text = ""

    def now(self) -> str:
        second = int(self._clock())
        if second != self._second:
            moment = dt.datetime.fromtimestamp(second, dt.UTC)
            self._text = email.utils.format_datetime(moment)
            self._second = second
        return self._text


class ResolutionCache:
    """A small TTL cache of resolutions keyed by the lower-cased address (loop thread only)."""

    def __init__(self, ttl: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[str, tuple[float, Resolution]] = {}

    def get(self, key: str) -> Resolution | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: str, resolution: Resolution) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= _RESOLUTION_CACHE_MAX:
            self._entries.clear()
        self._entries[key] = (self._clock() + self.ttl, resolution)


class StatsBatcher:
    """Counts stored copies in memory and adds them to the 'deliveries' counter in batches.

    Why batched: one database write per message would serialise every delivery on the
    database (SQLite has one writer) for a dashboard figure. Why a failure is only logged:
    the message is already stored and answered; turning a counter failure into a 451 would
    make the sender retry and duplicate the message. At most one interval of counts is lost
    if the process dies.
    """

    def __init__(
        self, session_factory: sessionmaker[Session], executor: Executor, interval: float = 1.0
    ) -> None:
        self._session_factory = session_factory
        self._executor = executor
        self._interval = interval
        self._pending = 0
        self._task: asyncio.Task[None] | None = None

    def add(self, count: int) -> None:
        self._pending += count

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        count, self._pending = self._pending, 0
        if not count:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._bump, count)
        except Exception:
            self._pending += count
            log.warning("could not update the deliveries counter (+%d); will retry", count)

    def _bump(self, count: int) -> None:
        with transaction(self._session_factory) as session:
            stats.bump(session, metric="deliveries", by=count)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()


class LoopCompletions:
    """Hands results of executor jobs back to the event loop, several per wake-up.

    Why not ``loop.run_in_executor``: it wraps a ``concurrent.futures.Future`` in an asyncio
    one (``wrap_future`` and its state copying) and wakes the loop once per job. Here a worker
    thread appends its result to a list and wakes the loop only when no wake-up is pending
    yet, and the loop completes every asyncio future in that list in one callback.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._done: list[tuple[asyncio.Future[Any], BaseException | None, Any]] = []

    def run(self, executor: Executor, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(*args)`` on ``executor``; the returned future completes on the loop."""
        future: asyncio.Future[T] = self._loop.create_future()

        def job() -> None:
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the awaiting coroutine, re-raised there
                self._complete(future, exc, None)
            else:
                self._complete(future, None, result)

        executor.submit(job)
        return future

    def _complete(
        self, future: asyncio.Future[Any], exc: BaseException | None, result: Any
    ) -> None:
        with self._lock:
            self._done.append((future, exc, result))
            wake = len(self._done) == 1  # else a wake-up is already on its way
        if wake:
            self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            done, self._done = self._done, []
        for future, exc, result in done:
            if future.done():  # cancelled meanwhile (connection lost, deadline)
                continue
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(result)


class IngressHandler:
    """The aiosmtpd handler: HELO/EHLO, MAIL, RCPT policy, DATA delivery, error mapping."""

    def __init__(
        self,
        settings: Settings,
        *,
        session_factory: sessionmaker[Session],
        store: MaildirStore,
        executor: Executor,
        stats_batcher: StatsBatcher,
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.store = store
        self.executor = executor
        self.stats = stats_batcher
        self.resolutions = ResolutionCache(settings.smtp_resolution_cache_seconds)
        self.queue_ids = QueueIds()
        self.received_date = ReceivedDate()
        self._completions: LoopCompletions | None = None

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        completions = self._completions
        if completions is None:  # first use, on the serving loop
            completions = self._completions = LoopCompletions(asyncio.get_running_loop())
        return await completions.run(self.executor, fn, *args)

    # ------------------------------------------------------------------ greeting commands
    async def handle_HELO(
        self, server: ServerLike, session: SmtpSession, envelope: IngressEnvelope, hostname: str
    ) -> str:
        if _has_control(hostname) or " " in hostname.strip():
            server.note_junk()
            return "501 5.5.4 Syntax: HELO hostname"
        session.host_name = hostname
        envelope.txn = None
        return f"250 {server.hostname}"

    async def handle_EHLO(
        self,
        server: ServerLike,
        session: SmtpSession,
        envelope: IngressEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        if _has_control(hostname) or " " in hostname.strip():
            server.note_junk()
            return ["501 5.5.4 Syntax: EHLO hostname"]
        session.host_name = hostname
        # No AUTH on an MX (aiosmtpd would offer it after STARTTLS).
        lines = [r for r in responses[:-1] if not r.startswith("250-AUTH")]
        lines += ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250 HELP"]
        return lines

    async def handle_NOOP(
        self, server: ServerLike, session: SmtpSession, envelope: IngressEnvelope, arg: str
    ) -> str:
        server.note_noop()
        return replies.NOOP_OK

    async def handle_RSET(
        self, server: ServerLike, session: SmtpSession, envelope: IngressEnvelope
    ) -> str:
        server.note_noop()
        return replies.RSET_OK

    async def handle_VRFY(
        self, server: ServerLike, session: SmtpSession, envelope: IngressEnvelope, address: str
    ) -> str:
        # No user enumeration (RFC 5321 section 3.5.3 allows 252).
        server.note_noop()
        return replies.VRFY_REPLY

    # ------------------------------------------------------------------ envelope
    async def handle_MAIL(
        self,
        server: ServerLike,
        session: SmtpSession,
        envelope: IngressEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        sender = "" if address == "<>" else address
        if _has_control(sender) or (sender and "@" not in sender):
            return replies.BAD_SENDER
        envelope.mail_from = sender if sender else "<>"
        envelope.mail_options.extend(options)
        envelope.txn = Transaction(queue_id=self.queue_ids.next(), sender=sender)
        return replies.SENDER_OK

    async def handle_RCPT(
        self,
        server: ServerLike,
        session: SmtpSession,
        envelope: IngressEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        reply = await self._rcpt(server, session, envelope, address, options)
        if not reply.startswith("2"):
            metrics.refused("smtp", "rcpt", reply)
            hourly.add("refused")
        return reply

    async def _rcpt(
        self,
        server: ServerLike,
        session: SmtpSession,
        envelope: IngressEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        txn = envelope.txn
        assert txn is not None  # aiosmtpd answers 503 to RCPT before MAIL
        if address == "<>":
            return replies.BAD_RCPT
        if len(txn.accepted) >= self.settings.smtp_max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        if address.lower() != POSTMASTER and _relay_trick(address):
            self._log_reject(session, txn, address, replies.RELAY_DENIED)
            return replies.RELAY_DENIED
        key = address.lower()
        resolution = txn.cache.get(key) or self.resolutions.get(key)
        if resolution is None:
            try:
                resolution = await self._blocking(self._resolve, address)
            except (SQLAlchemyError, TemporaryError, OSError):
                # Database unreachable or similar: always temporary, never a 5xx.
                log.warning("recipient lookup failed for %s", address, exc_info=True)
                return replies.TEMPFAIL
            self.resolutions.put(key, resolution)
        txn.cache[key] = resolution
        reply = replies.VERDICT_REPLIES[resolution.verdict]
        if resolution.verdict is not Verdict.OK or not resolution.targets:
            self._log_reject(session, txn, address, reply)
            return reply if resolution.verdict is not Verdict.OK else replies.TEMPFAIL
        for target in resolution.targets:
            txn.targets.setdefault(target.mailbox_id, (target, address))
        txn.accepted.append(address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return reply

    def _resolve(self, address: str) -> Resolution:
        with transaction(self.session_factory) as session:
            return resolve_recipient(
                session,
                address=address,
                store=self.store,
                postmaster_address=self.settings.postmaster_address,
            )

    # ------------------------------------------------------------------ delivery
    def open_body(self, envelope: IngressEnvelope) -> SpooledBody:
        """Where the protocol streams the decoded body: in memory, spilling past 256 KiB
        into the first recipient's ``tmp/`` (nothing is created until then)."""
        txn = envelope.txn
        assert txn is not None and txn.targets  # DATA needs an accepted RCPT
        first, _ = next(iter(txn.targets.values()))
        return spool_body(self.store, first.ref)

    async def flush_body(self, body: SpooledBody) -> None:
        """Write what the body holds in memory to its spill file, off the event loop."""
        await self._blocking(body.flush)

    def discard_body(self, body: SpooledBody) -> None:
        """Drop the body and its spill file, off the loop and without waiting: this runs in
        ``finally`` blocks of cancelled coroutines too (connection lost, deadline)."""
        try:
            self.executor.submit(body.discard)
        except RuntimeError:  # executor shut down (server stopping): cheap enough inline
            body.discard()

    async def handle_DATA(
        self, server: ServerLike, session: SmtpSession, envelope: IngressEnvelope
    ) -> str:
        txn = envelope.txn
        body = envelope.body
        assert txn is not None and body is not None  # set by IngressSMTP.smtp_DATA
        targets = [target for target, _ in txn.targets.values()]
        copies = [
            (target.ref, self._trace_headers(server, session, txn, target, rcpt))
            for target, rcpt in txn.targets.values()
        ]
        reply = replies.delivered(txn.queue_id)
        started = time.monotonic()
        # The transaction's log line is written by the delivery job after the copies are
        # stored, so the event loop never waits on log I/O; its fields are taken here.
        line = self._transaction_line(session, txn, body.size, reply[:9])
        try:
            kept = await self._blocking(self._deliver, targets, copies, body, line)
        except Exception as exc:
            cid = secrets.token_hex(4)
            log.exception("delivery failed id=%s qid=%s", cid, txn.queue_id)
            refusal = replies.delivery_failure(exc)
            failed = self._transaction_line(session, txn, body.size, f"{refusal[:9]} ref={cid}")
            if failed is not None:
                failed.write()
            metrics.refused("smtp", "data", refusal)
            hourly.add("refused")
            return refusal
        if not kept:
            return replies.RECIPIENTS_GONE
        self.stats.add(kept)
        metrics.message_accepted(
            "smtp", copies=kept, size=body.size, seconds=time.monotonic() - started
        )
        hourly.add("received", kept)
        server.transaction_done()
        return reply

    def _deliver(
        self,
        targets: list[Target],
        copies: list[tuple[MailboxRef, bytes]],
        body: SpooledBody,
        line: TransactionLogLine | None,
    ) -> int:
        """One executor job per transaction: store every copy (its trace header, then the
        body), drop the copies of mailboxes deleted meanwhile, log the transaction; returns
        how many copies were kept.

        Why the check after storing: a target was resolved at RCPT time (or up to
        ``smtp_resolution_cache_seconds`` earlier), and ``MaildirStore.deliver`` re-creates
        a Maildir that a deletion removed, where the next mailbox created at that address
        would find the message. Mailbox ids are never reused, so "id still exists" is exact.

        Why it is race-free: the check's query starts after every copy is renamed into
        ``new/``. A deletion commits its row first and removes the Maildir after its commit
        (``mailbox remove``, the portal, the API). If the check does not see the mailbox, we
        remove the copy ourselves. If it does see it, the deletion commits after the check
        began, hence after our rename, and its removal of the Maildir, which runs later
        still, takes our copy with it. Either way nothing is left for a later owner of the
        address. Semantically the copy was delivered and then deleted with its mailbox.

        Why all copies go back on a failure here: we could not tell which copies are safe,
        and a 451 makes the sender retry, so removing them loses nothing (no POP3 session
        has seen them: a POP3 maildrop is listed at login, which needs the database too).
        """
        stored = deliver_spooled(self.store, copies, body)
        try:
            with self._read_connection() as connection:
                alive = existing_mailbox_ids(connection, ids=[t.mailbox_id for t in targets])
            for target, info in zip(targets, stored, strict=True):
                if target.mailbox_id not in alive:
                    # The deletion's own removal of the Maildir may be running right now.
                    with contextlib.suppress(FileNotFoundError):
                        self.store.expunge(target.ref, [info])
        except BaseException:
            for target, info in zip(targets, stored, strict=True):
                with contextlib.suppress(OSError):
                    self.store.expunge(target.ref, [info])
            raise
        kept = sum(1 for target in targets if target.mailbox_id in alive)
        quota_warnings.after_delivery(
            self.store,
            self.settings,
            (
                quota_warnings.Receiver(t.ref, t.address, t.quota_bytes)
                for t in targets
                if t.mailbox_id in alive
            ),
        )
        if line is not None:
            if kept != len(targets):
                result = line.result if kept else replies.RECIPIENTS_GONE[:9]
                gone = len(targets) - kept
                line = dataclasses.replace(line, copies=kept, result=f"{result} gone={gone}")
            line.write()
        return kept

    def _read_connection(self) -> contextlib.AbstractContextManager[Session | Connection]:
        """A read-only database connection for the check after storing: a Core connection of
        the factory's engine (no ORM session: this runs per message), or a
        session when the factory is not bound to an engine. Neither commits: closing ends the
        read transaction."""
        bind = getattr(self.session_factory, "kw", {}).get("bind")
        if isinstance(bind, Engine):
            return bind.connect()
        return self.session_factory()

    def _trace_headers(
        self, server: ServerLike, session: SmtpSession, txn: Transaction, target: Target, rcpt: str
    ) -> bytes:
        """Return-Path, Delivered-To and an RFC 5321 section 4.4 Received header."""
        helo = session.host_name or "unknown"
        tls = session.ssl is not None
        protocol = ("ESMTPS" if tls else "ESMTP") if session.extended_smtp else "SMTP"
        tls_comment = ""
        if tls:
            cipher = session.ssl.get("cipher") if isinstance(session.ssl, dict) else None
            if cipher:
                tls_comment = f"\n\t(using {cipher[1]} with cipher {cipher[0]})"
        date = self.received_date.now()
        return (
            f"Return-Path: <{txn.sender}>\n"
            f"Delivered-To: {target.address}\n"
            f"Received: from {helo} ([{_peer_ip(session)}])\n"
            f"\tby {server.hostname} (Mailhost) with {protocol} id {txn.queue_id}{tls_comment}\n"
            f"\tfor <{rcpt}>; {date}\n"
        ).encode("utf-8", "surrogateescape")

    # ------------------------------------------------------------------ errors and logs
    async def handle_exception(self, error: Exception) -> str:
        cid = secrets.token_hex(4)
        log.error("handler error id=%s", cid, exc_info=error)
        return replies.internal_error(cid)

    def _log_reject(self, session: SmtpSession, txn: Transaction, rcpt: str, reply: str) -> None:
        log.info(
            "reject qid=%s client=%s from=<%s> to=<%s> result=%s",
            txn.queue_id,
            _peer_ip(session),
            txn.sender,
            rcpt,
            reply[:9],
        )

    def _transaction_line(
        self, session: SmtpSession, txn: Transaction, size: int, result: str
    ) -> TransactionLogLine | None:
        """The one log line per transaction, or None when INFO is off (then nothing is
        formatted at all)."""
        if not log.isEnabledFor(logging.INFO):
            return None
        return TransactionLogLine(
            queue_id=txn.queue_id,
            client=_peer_ip(session),
            helo=session.host_name,
            sender=txn.sender,
            recipients=",".join(["<" + a + ">" for a in txn.accepted]),
            copies=len(txn.targets),
            size=size,
            result=result,
        )
