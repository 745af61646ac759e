"""The MX handler's small parts: per-process helpers (queue ids, Received dates, the
resolution cache, the counter batcher, executor completions), the transaction log line, and
``HandlerCore``, the state and the tracking/log methods that every room of the handler uses
(smtp_ingress/handler.py composes the rooms: scanning, delivery, relay_data).
"""

from __future__ import annotations

import asyncio
import contextlib
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
from sqlalchemy.orm import Session, sessionmaker

from app import protocol_refusals
from app.config import Settings
from app.db import transaction
from app.scanning.decision import Decision
from app.services import scan_log, stats
from app.services.resolution import Resolution
from app.services.scan_log import RejectionRecord
from app.tracking import Event, EventWriter
from smtp_ingress.envelope import Transaction

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


class HandlerCore:
    """What every room of ``IngressHandler`` shares: its settings, the tracking writer, the
    executor bridge (``_blocking``) and the refusal / transaction records."""

    settings: Settings
    tracking: EventWriter
    executor: Executor
    queue_ids: QueueIds
    _completions: LoopCompletions | None

    def protocol_refusal(self, server: Any, reply: str, original: str | None = None) -> None:
        """A 4xx/5xx the protocol layer answered itself (IngressSMTP calls this for every
        such reply that no handler hook made: syntax errors, 552 size, 554 bare LF, 421
        limits and timeouts, improper pipelining). Counted by reply class and recorded as a
        ``refused`` event under the transaction's queue id or, before MAIL, the session's
        id (``S`` + a queue id, made on the session's first refusal). Memory only: a
        counter and the tracking buffer, no database round trip."""
        session = server.session
        txn = getattr(server.envelope, "txn", None) or server.ended_txn
        server.session_id = protocol_refusals.record(
            self.tracking,
            protocol_refusals.Refusal(
                stage=protocol_refusals.stage_of(server.stage, original),
                reply=reply,
                client_ip=server.client_ip,
                helo=session.host_name if session is not None else None,
                queue_id=txn.queue_id if txn is not None else None,
                sender=txn.sender if txn is not None else None,
            ),
            service="mx",
            metrics_service="smtp",
            session_id=server.session_id,
            new_id=self.queue_ids.next,
        )

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        completions = self._completions
        if completions is None:  # first use, on the serving loop
            completions = self._completions = LoopCompletions(asyncio.get_running_loop())
        return await completions.run(self.executor, fn, *args)

    def _track_refusal(
        self,
        session: SmtpSession,
        txn: Transaction | None,
        stage: str,
        reply: str,
        *,
        sender: str | None = None,
        rcpt: str | None = None,
        detail: str | None = None,
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
                detail=detail,
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
