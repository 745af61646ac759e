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
from app.delivery_rules import DeliveryRules, Plan, Recipient
from app.errors import TemporaryError, ValidationError
from app.maildir import MailboxRef, MaildirStore
from app.maildir_stream import SpooledBody, deliver_spooled, spool_body
from app.scanning.clients import ScanEnvelope
from app.scanning.decision import Action, Decision, ScanPolicy
from app.services import scan_log, stats
from app.services.resolution import (
    POSTMASTER,
    Resolution,
    Target,
    Verdict,
    existing_mailbox_ids,
    resolve_recipient,
)
from app.services.scan_log import RejectionRecord
from app.services.scan_policy import DomainScanRules, most_lenient, rules_for_domain
from app.spool import SpoolStore
from app.spool_body import SpoolSpilledBody
from app.tracking import Event, EventWriter
from smtp_ingress import relay as relay_edge
from smtp_ingress import replies
from smtp_ingress.envelope import IngressEnvelope, ServerLike, Transaction
from smtp_ingress.relay import RelayDesk
from smtp_ingress.scanning import BLOCKED, CopyRules, ScanStep, StoredHeaders, reply_for

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
# Rejections kept for the next batch write at most (a flood beyond this is only counted).
_MAX_PENDING_REJECTIONS = 1000


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
    scan: str = ""  # the scan decision (Decision.log_fields), when scanning is on

    def write(self) -> None:
        log.info(
            "qid=%s client=%s helo=%s from=<%s> to=%s copies=%d size=%d result=%s%s",
            self.queue_id,
            self.client,
            self.helo,
            self.sender,
            self.recipients,
            self.copies,
            self.size,
            self.result,
            " " + self.scan if self.scan else "",
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
        # Scan outcomes (app/services/scan_log.py): counts per metric and rejections, written
        # with the same batch for the same reason.
        self._scan_counts: dict[str, int] = {}
        self._rejections: list[RejectionRecord] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, count: int) -> None:
        self._pending += count

    def add_scan(self, outcome: str, rejection: RejectionRecord | None = None) -> None:
        """Count a scan outcome (a key of ``scan_log.METRICS``), and keep a rejection."""
        metric = scan_log.METRICS[outcome]
        self._scan_counts[metric] = self._scan_counts.get(metric, 0) + 1
        if rejection is not None and len(self._rejections) < _MAX_PENDING_REJECTIONS:
            self._rejections.append(rejection)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> None:
        count, self._pending = self._pending, 0
        scans, self._scan_counts = self._scan_counts, {}
        rejections, self._rejections = self._rejections, []
        if not count and not scans and not rejections:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._bump, count, scans, rejections)
        except Exception:
            self._pending += count
            for metric, n in scans.items():
                self._scan_counts[metric] = self._scan_counts.get(metric, 0) + n
            log.warning("could not update the deliveries counter (+%d); will retry", count)

    def _bump(self, count: int, scans: dict[str, int], rejections: list[RejectionRecord]) -> None:
        with transaction(self._session_factory) as session:
            if count:
                stats.bump(session, metric="deliveries", by=count)
            if scans or rejections:
                scan_log.write(session, counts=scans, rejections=rejections)

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
        spool: SpoolStore | None = None,
        scan_step: ScanStep | None = None,
        tracking: EventWriter | None = None,
    ) -> None:
        self.settings = settings
        self.tracking = tracking or EventWriter.disabled()
        self.scan_step = scan_step
        self.scan_policy = ScanPolicy(
            reject_score=settings.scan_reject_score,
            tag_score=settings.scan_tag_score,
            subject_tag=settings.scan_subject_tag,
            greylisting=settings.scan_greylisting,
        )
        # Scan rules per hosted domain, reused as briefly as recipient resolutions.
        self._rules_cache: dict[str, tuple[float, DomainScanRules]] = {}
        self.session_factory = session_factory
        self.store = store
        self.executor = executor
        self.stats = stats_batcher
        self.resolutions = ResolutionCache(settings.smtp_resolution_cache_seconds)
        self.queue_ids = QueueIds()
        self.received_date = ReceivedDate()
        self._completions: LoopCompletions | None = None
        self.spool = spool or SpoolStore(settings.spool_root)
        self.relay = RelayDesk(
            settings, session_factory=session_factory, spool=self.spool, blocking=self._blocking
        )
        # Forwarding and auto-replies of the recipients' mailboxes (app/delivery_rules.py).
        self.rules = DeliveryRules(settings, spool=self.spool)

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
        lines += ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-ETRN", "250 HELP"]
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

    async def handle_ETRN(
        self, server: ServerLike, session: SmtpSession, envelope: IngressEnvelope, arg: str | None
    ) -> str:
        """RFC 1985 (smtp_ingress/relay.py has the policy)."""
        server.note_noop()
        if envelope.txn is not None:
            return relay_edge.ETRN_IN_TRANSACTION
        return await self.relay.etrn(_peer_ip(session), arg)

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
            self._track_refusal(session, None, "MAIL", replies.BAD_SENDER, sender=sender)
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
            self._track_refusal(session, txn, "RCPT", replies.BAD_RCPT, rcpt=address)
            return replies.BAD_RCPT
        if len(txn.accepted) >= self.settings.smtp_max_recipients:
            self._track_refusal(session, txn, "RCPT", replies.TOO_MANY_RECIPIENTS, rcpt=address)
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
                self._track_refusal(session, txn, "RCPT", replies.TEMPFAIL, rcpt=address)
                return replies.TEMPFAIL
            self.resolutions.put(key, resolution)
        txn.cache[key] = resolution
        if resolution.verdict is Verdict.UNKNOWN_DOMAIN:
            relay_reply = await self._relay_rcpt(txn, address)
            if relay_reply is not None:
                if relay_reply[:1] != "2":
                    self._log_reject(session, txn, address, relay_reply)
                    return relay_reply
                envelope.rcpt_tos.append(address)
                envelope.rcpt_options.extend(options)
                return relay_reply
        reply = replies.VERDICT_REPLIES[resolution.verdict]
        if resolution.verdict is not Verdict.OK or not resolution.targets:
            self._log_reject(session, txn, address, reply)
            return reply if resolution.verdict is not Verdict.OK else replies.TEMPFAIL
        if self.scan_step is not None:
            refusal = await self._list_check(session, txn, resolution.targets)
            if refusal is not None:
                self._log_reject(session, txn, address, refusal)
                self._record_rejection(session, txn, resolution.targets[0], address, None)
                return refusal
        for target in resolution.targets:
            copy_key = (target.mailbox_id, key) if target.via_catchall else target.mailbox_id
            txn.targets.setdefault(copy_key, (target, address))
        txn.accepted.append(address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        self.tracking.record(
            Event(
                kind="received",
                service="mx",
                queue_id=txn.queue_id,
                client_ip=_peer_ip(session),
                helo=session.host_name,
                sender=txn.sender,
                recipient=address,
                stage="RCPT",
                reply=reply,
                detail="resolved to " + ", ".join(t.address for t in resolution.targets),
            )
        )
        return reply

    async def _relay_rcpt(self, txn: Transaction, address: str) -> str | None:
        """The reply for a relay domain's recipient (accepted ones are noted in ``txn``), or
        None when the domain is no relay domain either."""
        try:
            info = await self.relay.info(address.rpartition("@")[2])
            if info is None:
                return None
            reply = await self.relay.rcpt(info, address)
        except (SQLAlchemyError, TemporaryError, OSError):
            log.warning("relay recipient lookup failed for %s", address, exc_info=True)
            return replies.TEMPFAIL
        if reply[:1] == "2":
            txn.relay.append((address, info))
            txn.accepted.append(address)
        return reply

    async def _list_check(
        self, session: SmtpSession, txn: Transaction, targets: tuple[Target, ...]
    ) -> str | None:
        """The recipient domains' block and allow lists, before any scan: a block refuses
        this recipient (550 5.7.1); an allow marks its copies as not to be spam-checked."""
        for target in targets:
            rules = await self._domain_rules(target.ref.domain)
            verdict = rules.verdict(sender=txn.sender, client_ip=_peer_ip(session))
            if verdict == "block":
                return BLOCKED
            txn.scan_rules[target.mailbox_id] = CopyRules(rules.policy, verdict == "allow")
        return None

    async def _domain_rules(self, domain: str) -> DomainScanRules:
        now = time.monotonic()
        cached = self._rules_cache.get(domain)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            rules = await self._blocking(self._load_rules, domain)
        except (SQLAlchemyError, OSError):
            log.warning("scan policy lookup failed for %s; using the defaults", domain)
            return DomainScanRules(self.scan_policy)
        if len(self._rules_cache) >= _RESOLUTION_CACHE_MAX:
            self._rules_cache.clear()
        self._rules_cache[domain] = (now + self.settings.smtp_resolution_cache_seconds, rules)
        return rules

    def _load_rules(self, domain: str) -> DomainScanRules:
        with transaction(self.session_factory) as session:
            return rules_for_domain(session, domain_name=domain, defaults=self.scan_policy)

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
        assert txn is not None and (txn.targets or txn.relay)  # DATA needs an accepted RCPT
        if not txn.targets:  # relay recipients only: spill into the outbound spool
            return SpoolSpilledBody(self.spool)
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
        if await self._loops(body):
            self._log_reject(session, txn, ",".join(txn.accepted), relay_edge.LOOP_REFUSED)
            return relay_edge.LOOP_REFUSED
        if txn.relay:
            return await self._data_with_relay(server, session, txn, body)
        targets = [target for target, _ in txn.targets.values()]
        scanned: list[StoredHeaders | None] = [None] * len(targets)
        decision: Decision | None = None
        if self.scan_step is not None:
            outcome = await self._scan(session, txn, body)
            if isinstance(outcome, str):
                return outcome
            decision, stored = outcome
            scanned = list(stored)
        reply = replies.delivered(txn.queue_id)
        # What each stored copy's event says, taken here on the loop (the session is ours).
        stored_event = Event(
            kind="stored",
            service="mx",
            queue_id=txn.queue_id,
            client_ip=_peer_ip(session),
            helo=session.host_name,
            sender=txn.sender,
            stage="DATA",
            reply=reply,
            detail=f"size={body.size}",
        )
        tracked = (stored_event, [rcpt for _, rcpt in txn.targets.values()])
        copies = [
            (target.ref, self._trace_headers(server, session, txn, target, rcpt, extra))
            for (target, rcpt), extra in zip(txn.targets.values(), scanned, strict=True)
        ]
        started = time.monotonic()
        # The transaction's log line is written by the delivery job after the copies are
        # stored, so the event loop never waits on log I/O; its fields are taken here.
        line = self._transaction_line(session, txn, body.size, reply[:9], decision)
        recipients = [Recipient(t.mailbox_id, t.address, r) for t, r in txn.targets.values()]
        try:
            kept = await self._blocking(
                self._deliver,
                targets,
                copies,
                body,
                line,
                tracked if self.tracking.enabled else None,
                (txn.sender, recipients),
            )
        except Exception as exc:
            cid = secrets.token_hex(4)
            log.exception("delivery failed id=%s qid=%s", cid, txn.queue_id)
            refusal = replies.delivery_failure(exc)
            failed = self._transaction_line(session, txn, body.size, f"{refusal[:9]} ref={cid}")
            if failed is not None:
                failed.write()
            self._track_refusal(session, txn, "DATA", refusal)
            metrics.refused("smtp", "data", refusal)
            hourly.add("refused")
            return refusal
        if not kept:
            self._track_refusal(session, txn, "DATA", replies.RECIPIENTS_GONE)
            return replies.RECIPIENTS_GONE
        self.stats.add(kept)
        metrics.message_accepted(
            "smtp", copies=kept, size=body.size, seconds=time.monotonic() - started
        )
        hourly.add("received", kept)
        server.transaction_done()
        return reply

    async def _loops(self, body: SpooledBody) -> bool:
        """More than 30 Received fields (RFC 5321 section 6.3); a spilled body's head is
        read off the loop."""
        limit = 256 * 1024
        head = await self._blocking(body.head, limit) if body.spilled else body.head(limit)
        return relay_edge.too_many_received(head)

    async def _data_with_relay(
        self, server: ServerLike, session: SmtpSession, txn: Transaction, body: SpooledBody
    ) -> str:
        """DATA for a transaction with relay recipients (and maybe hosted ones): the queue
        copy is spooled and committed first, then the Maildir copies; if those fail the
        queue copy is taken back and the client retries the whole message (451)."""
        helo = session.host_name or "unknown"
        protocol = ("ESMTPS" if session.ssl else "ESMTP") if session.extended_smtp else "SMTP"
        copy = relay_edge.RelayCopy(
            queue_id=txn.queue_id,
            sender=txn.sender,
            recipients=tuple(txn.relay),
            trace_header=self.relay.trace_header(
                helo=helo,
                client_ip=_peer_ip(session),
                protocol=protocol,
                queue_id=txn.queue_id,
                rcpts=[a for a, _ in txn.relay],
            ),
        )
        targets = [target for target, _ in txn.targets.values()]
        copies = [
            (target.ref, self._trace_headers(server, session, txn, target, rcpt))
            for target, rcpt in txn.targets.values()
        ]
        reply = replies.delivered(txn.queue_id)
        line = self._transaction_line(session, txn, body.size, reply[:9])
        if line is not None:
            line = dataclasses.replace(line, copies=len(targets) + len(txn.relay))

        def job() -> int:
            stored = self.relay.store(copy, body)
            if not targets:
                if line is not None:
                    line.write()
                return len(txn.relay)
            try:
                return len(txn.relay) + self._deliver(targets, copies, body, line)
            except BaseException:
                self.relay.unstore(*stored)
                raise

        try:
            kept = await self._blocking(job)
        except ValidationError:  # a sender the queue cannot hold (queue.clean_remote_address)
            return relay_edge.BAD_SENDER_FOR_RELAY
        except Exception as exc:
            cid = secrets.token_hex(4)
            log.exception("relay delivery failed id=%s qid=%s", cid, txn.queue_id)
            return replies.delivery_failure(exc)
        self.stats.add(kept)
        server.transaction_done()
        return reply

    async def _scan(
        self, session: SmtpSession, txn: Transaction, body: SpooledBody
    ) -> str | tuple[Decision, list[StoredHeaders]]:
        """Scan the body (smtp_ingress/scanning.py): a refusal, or what to add when storing."""
        step = self.scan_step
        assert step is not None
        content = await self._blocking(body.read_all) if body.spilled else body.read_all()
        copies = [
            txn.scan_rules.get(target.mailbox_id, CopyRules(self.scan_policy))
            for target, _ in txn.targets.values()
        ]
        checked = [copy.policy for copy in copies if not copy.allowed]
        # An allow-listed recipient counts as "never reject"; only when every copy is
        # allow-listed is rspamd not asked at all (clamd still is).
        policy = most_lenient(checked) if checked else copies[0].policy
        if len(checked) < len(copies):
            policy = dataclasses.replace(policy, reject_score=float("inf"))
        envelope = ScanEnvelope(
            client_ip=_peer_ip(session),
            helo=session.host_name,
            sender=txn.sender,
            recipients=tuple(txn.accepted),
            queue_id=txn.queue_id,
        )
        decision = await step.scan(content, envelope, policy, spam_check=bool(checked))
        refusal = reply_for(decision, txn.queue_id)
        self._count_scan(session, txn, decision)
        if refusal is not None:
            line = self._transaction_line(session, txn, body.size, refusal[:9], decision)
            if line is not None:
                line.write()
            return refusal
        stored, old_head = step.stored_headers(
            content, decision, copies, sender=txn.sender, helo=session.host_name
        )
        if old_head:
            if body.spilled:
                await self._blocking(body.cut_head, old_head)
            else:
                body.cut_head(old_head)
        return decision, stored

    def _count_scan(self, session: SmtpSession, txn: Transaction, decision: Decision) -> None:
        outcome = {
            Action.REJECT: "rejected",
            Action.VIRUS: "rejected",
            Action.TAG: "tagged",
            Action.UNSCANNED: "unscanned",
            Action.TEMPFAIL: "deferred",
        }.get(decision.action, "clean")
        score = decision.score
        # Tagged if any copy's own domain tags at this score.
        if (
            outcome == "clean"
            and score is not None
            and any(
                not rules.allowed and score >= rules.policy.tag_score
                for rules in txn.scan_rules.values()
            )
        ):
            outcome = "tagged"
        if outcome != "rejected":
            self.stats.add_scan(outcome)
            return
        for target, rcpt in txn.targets.values():
            self._record_rejection(session, txn, target, rcpt, decision)

    def _record_rejection(
        self,
        session: SmtpSession,
        txn: Transaction,
        target: Target,
        rcpt: str,
        decision: Decision | None,
    ) -> None:
        """One rejection row per recipient domain's view (the dashboard counts messages)."""
        record = RejectionRecord(
            domain=target.ref.domain,
            queue_id=txn.queue_id,
            client_ip=_peer_ip(session),
            sender=txn.sender,
            recipient=rcpt,
            action=decision.action.value if decision is not None else "blocked",
            score=decision.score if decision is not None else None,
            symbols=",".join(decision.symbols) if decision is not None else "",
            reason=decision.reason if decision is not None else "block list",
            occurred_at=dt.datetime.now(dt.UTC),
        )
        self.stats.add_scan("rejected", record)

    def _deliver(
        self,
        targets: list[Target],
        copies: list[tuple[MailboxRef, bytes]],
        body: SpooledBody,
        line: TransactionLogLine | None,
        tracked: tuple[Event, list[str]] | None = None,
        rules_for: tuple[str, list[Recipient]] | None = None,
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

        Forwards and auto-replies (``app.delivery_rules``): the plan is made before storing
        (a forward without a copy stores none), its forwards are queued in one commit after
        the check (a failure takes the copies back, as above), the auto-replies after that.
        """
        every = [t.mailbox_id for t in targets]
        rcpts = list(tracked[1]) if tracked is not None else [""] * len(targets)
        plan = self._plan(rules_for, copies, body)
        if plan is not None and plan.forwarded_only:
            kept_copies = [
                (t, c, r)
                for t, c, r in zip(targets, copies, rcpts, strict=True)
                if plan.keeps_copy(t.mailbox_id)
            ]
            targets = [t for t, _, _ in kept_copies]
            copies = [c for _, c, _ in kept_copies]
            rcpts = [r for _, _, r in kept_copies]
        try:
            stored = deliver_spooled(self.store, copies, body)
        except BaseException:
            if plan is not None:
                plan.discard()
            raise
        try:
            with self._read_connection() as connection:
                alive = existing_mailbox_ids(connection, ids=every)
            for target, info in zip(targets, stored, strict=True):
                if target.mailbox_id not in alive:
                    # The deletion's own removal of the Maildir may be running right now.
                    with contextlib.suppress(FileNotFoundError):
                        self.store.expunge(target.ref, [info])
            if plan is not None and plan.forwards:
                with transaction(self.session_factory) as session:
                    plan.enqueue(session, alive=alive)
        except BaseException:
            for target, info in zip(targets, stored, strict=True):
                with contextlib.suppress(OSError):
                    self.store.expunge(target.ref, [info])
            if plan is not None:
                plan.discard()
            raise
        kept = sum(1 for mailbox_id in every if mailbox_id in alive)
        if plan is not None:
            plan.send_auto_replies(self.session_factory)
        if tracked is not None:
            event = tracked[0]
            stored_at = dt.datetime.now(dt.UTC)
            self.tracking.record_all(
                [
                    dataclasses.replace(
                        event,
                        recipient=rcpt,
                        mailbox=target.address,
                        message_key=info.uid,
                        occurred_at=stored_at,
                    )
                    for target, info, rcpt in zip(targets, stored, rcpts, strict=True)
                    if target.mailbox_id in alive
                ]
            )
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

    def _plan(
        self,
        rules_for: tuple[str, list[Recipient]] | None,
        copies: list[tuple[MailboxRef, bytes]],
        body: SpooledBody,
    ) -> Plan | None:
        """The forwarding / auto-reply plan of this delivery, or None when no rule applies."""
        if not rules_for:
            return None
        sender, recipients = rules_for
        plan = self.rules.prepare(
            self.session_factory,
            sender=sender,
            recipients=recipients,
            traces=[header for _, header in copies],
            body=body.read_chunks,
        )
        return plan if plan.rules else None

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
        self,
        server: ServerLike,
        session: SmtpSession,
        txn: Transaction,
        target: Target,
        rcpt: str,
        scanned: StoredHeaders | None = None,
    ) -> bytes:
        """Return-Path, Delivered-To and an RFC 5321 section 4.4 Received header; after a
        scan, its result fields (and the rewritten header section, if any).

        Delivered-To names the mailbox; for a copy that came through the domain's catch-all
        (a multidrop mailbox) it names the envelope recipient instead, and X-Original-To
        repeats it (Postfix's name for it), so fetchmail's ``envelope Delivered-To`` (or
        ``envelope X-Original-To``) sorts the copies without guessing from To:/Cc:."""
        helo = session.host_name or "unknown"
        tls = session.ssl is not None
        protocol = ("ESMTPS" if tls else "ESMTP") if session.extended_smtp else "SMTP"
        tls_comment = ""
        if tls:
            cipher = session.ssl.get("cipher") if isinstance(session.ssl, dict) else None
            if cipher:
                tls_comment = f"\n\t(using {cipher[1]} with cipher {cipher[0]})"
        date = self.received_date.now()
        delivered_to = f"Delivered-To: {target.address}\n"
        if target.via_catchall:
            delivered_to = f"Delivered-To: {rcpt}\nX-Original-To: {rcpt}\n"
        trace = (
            f"Return-Path: <{txn.sender}>\n"
            f"{delivered_to}"
            f"Received: from {helo} ([{_peer_ip(session)}])\n"
            f"\tby {server.hostname} (Mailhost) with {protocol} id {txn.queue_id}{tls_comment}\n"
            f"\tfor <{rcpt}>; {date}\n"
        ).encode("utf-8", "surrogateescape")
        if scanned is not None:
            trace += scanned.added + (scanned.head or b"")
        return trace

    # ------------------------------------------------------------------ errors and logs
    async def handle_exception(self, error: Exception) -> str:
        cid = secrets.token_hex(4)
        log.error("handler error id=%s", cid, exc_info=error)
        return replies.internal_error(cid)

    def _track_refusal(
        self,
        session: SmtpSession,
        txn: Transaction | None,
        stage: str,
        reply: str,
        *,
        sender: str | None = None,
        rcpt: str | None = None,
    ) -> None:
        self.tracking.record(
            Event(
                kind="refused",
                service="mx",
                queue_id=txn.queue_id if txn else None,
                client_ip=_peer_ip(session),
                helo=session.host_name,
                sender=txn.sender if txn else sender,
                recipient=rcpt,
                stage=stage,
                reply=reply,
            )
        )

    def _log_reject(self, session: SmtpSession, txn: Transaction, rcpt: str, reply: str) -> None:
        self._track_refusal(session, txn, "RCPT", reply, rcpt=rcpt)
        log.info(
            "reject qid=%s client=%s from=<%s> to=<%s> result=%s",
            txn.queue_id,
            _peer_ip(session),
            txn.sender,
            rcpt,
            reply[:9],
        )

    def _transaction_line(
        self,
        session: SmtpSession,
        txn: Transaction,
        size: int,
        result: str,
        decision: Decision | None = None,
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
            scan=decision.log_fields() if decision is not None else "",
        )
