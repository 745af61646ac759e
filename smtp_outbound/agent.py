"""The delivery agent: claim due queue rows, deliver them (locally or by SMTP), record, bounce.

Theory of operation: the agent claims due rows with a lease (``app.services.queue.claim_due``,
``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL) and, in the same thread, reads ahead the
spool file of each small message once (all its recipients share it) and sorts hosted
recipients from remote ones. Hosted ones are stored in the Maildir; remote ones go to the
scheduler (``smtp_outbound.scheduler``) as one job per message and domain, which keeps a
FIFO, per-destination connections (reused) and the concurrency limits per destination.

``run`` is continuous: outcomes are recorded as they come (one transaction takes every outcome
that arrived while the previous one committed, with the DSNs they call for, RFC 3464; the DSN
file is spooled before that commit, so a crash leaves only an orphan file), and more rows are
claimed (``delivery_batch_size`` at a time) while fewer than four claims' worth of rows are
in hand, so each destination's queue is deep enough to fill its connections and a slow
destination never holds up the others. ``run_once`` is one drained round (claim, deliver all,
record in one transaction) for the CLI's ``queue flush`` and for tests with an injected clock.
Spool files of finished messages are removed after the commit that finishes them. Database
and file work runs in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
from collections import defaultdict
from collections.abc import Callable, Coroutine
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app import metrics
from app.config import Settings
from app.db import transaction
from app.dsn import DsnRecipient, build_dsn
from app.maildir import MaildirStore
from app.models import ORIGIN_BOUNCE, utcnow
from app.services import queue
from app.services.queue import Claimed, Notice, Reply, RetrySchedule
from app.spool import SpoolError, SpoolStore
from app.tracking import EventWriter
from smtp_outbound import client
from smtp_outbound import tracking as tracked
from smtp_outbound.local import deliver_local, is_hosted
from smtp_outbound.relay_hop import RelayRouting
from smtp_outbound.routing import Router
from smtp_outbound.scheduler import (
    DEFERRED,
    DELIVERED,
    FAILED,
    HANDED_BACK,
    HELD,
    Dispatcher,
    Job,
    Result,
    domain_of,
)

log = logging.getLogger("mailhost.outbound")

__all__ = ["DELIVERED", "DEFERRED", "FAILED", "DeliveryAgent", "Result"]

_HOUSEKEEPING_SECONDS = 300.0
# Messages up to this size are read ahead in the claiming thread, at most _READ_AHEAD_TOTAL
# octets per claim; larger ones are read by the lane that sends them.
_READ_AHEAD_MAX = 256 * 1024
_READ_AHEAD_TOTAL = 16 * 1024 * 1024
# The continuous mode keeps up to this many claims' worth of rows in hand, so that each
# destination has a queue deep enough to fill its connections (Postfix's active queue holds
# up to 20,000 messages); a claim takes delivery_batch_size rows.
_CLAIMS_IN_HAND = 4
# An idle connection is kept this long for the next claim's messages (Postfix: 2 s).
_LINGER_SECONDS = 2.0


class DeliveryAgent:
    """One worker. Several may run on several hosts against one PostgreSQL database."""

    def __init__(
        self,
        settings: Settings,
        factory: sessionmaker[Session],
        *,
        spool: SpoolStore,
        store: MaildirStore,
        clock: Callable[[], dt.datetime] = utcnow,
        worker: str | None = None,
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.spool = spool
        self.store = store
        self.clock = clock
        self.worker = worker or f"{settings.hostname}:{os.getpid()}:{secrets.token_hex(3)}"
        self.schedule = RetrySchedule(
            intervals=tuple(settings.delivery_retry_schedule),
            max_age=settings.delivery_max_age,
            delay_warning=settings.delivery_delay_warning,
        )
        self.router = Router(settings)
        self.tracking = EventWriter.from_settings(settings, factory)
        self.relays = RelayRouting(settings, factory, self.schedule)
        self.tls_memory = client.TLSMemory()
        self.backoff: dict[str, dt.datetime] = {}
        self._dispatcher: Dispatcher | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._results: list[Result] = []
        self._have_results: asyncio.Event | None = None
        self._progress: asyncio.Event | None = None
        self._in_hand = 0  # rows claimed and not yet recorded
        self._local_tasks: set[asyncio.Task[None]] = set()
        self._last_housekeeping: dt.datetime | None = None

    def _dispatch(self) -> Dispatcher:
        # Built per event loop (run_once may be called under several asyncio.run calls).
        self.tracking.start()  # once; the tracking writer is a thread of its own
        loop = asyncio.get_running_loop()
        if self._dispatcher is None or self._loop is not loop:
            self._loop = loop
            self._dispatcher = Dispatcher(
                self.settings,
                spool=self.spool,
                router=self.router,
                tls_memory=self.tls_memory,
                clock=self.clock,
                emit=self._emit,
                lease_seconds=self.settings.delivery_lease_seconds,
                relays=self.relays,
                worker=self.worker,
            )
            self._dispatcher.backoff = self.backoff
            self._have_results = asyncio.Event()
            self._progress = asyncio.Event()
        return self._dispatcher

    def _emit(self, results: list[Result]) -> None:
        self._results.extend(results)
        assert self._have_results is not None
        self._have_results.set()

    # ------------------------------------------------------------------ rounds
    async def run_once(self) -> int:
        """One round: claim due rows, deliver them all, record. Returns how many were claimed."""
        dispatcher = self._dispatch()
        claimed = await self._claim_and_hand_out(self.settings.delivery_batch_size)
        if not claimed:
            return 0
        await dispatcher.wait_idle()
        while self._local_tasks:
            await asyncio.gather(*self._local_tasks)
        # One transaction records the whole round. A crash before it leaves the rows leased:
        # taken again after the lease, sent twice at worst, never lost.
        results, self._results = self._results, []
        await asyncio.to_thread(self._record, results, self.relays.take_loops())
        self._in_hand -= len(results)
        return claimed

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver continuously until ``stop`` is set; then the messages being sent are
        finished and recorded, and rows not yet started are handed back."""
        log.info("delivery agent %s started", self.worker)
        dispatcher = self._dispatch()
        dispatcher.linger = _LINGER_SECONDS
        assert self._progress is not None
        loop = asyncio.get_running_loop()
        recorder = asyncio.create_task(self._recorder(), name="delivery recorder")
        batch = self.settings.delivery_batch_size
        next_poll = 0.0
        try:
            while not stop.is_set():
                room = min(batch, batch * _CLAIMS_IN_HAND - self._in_hand)
                hungry = room >= max(1, batch // 2)
                if hungry and loop.time() >= next_poll:
                    try:
                        got = await self._claim_and_hand_out(room)
                        await self._housekeeping()
                    except Exception:
                        log.exception("claiming delivery work failed")
                        got = 0
                    if got < room:  # nothing more due now: look again after the interval
                        next_poll = loop.time() + self.settings.delivery_poll_interval
                    continue
                wait = max(0.0, next_poll - loop.time()) if hungry else None
                self._progress.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        _first(stop.wait(), self._progress.wait()),
                        wait if wait is not None else self.settings.delivery_poll_interval,
                    )
        finally:
            await dispatcher.close()
            while self._local_tasks:
                await asyncio.gather(*self._local_tasks, return_exceptions=True)
            self._stopping = True
            assert self._have_results is not None
            self._have_results.set()
            await recorder
            await asyncio.to_thread(self.tracking.stop)
            log.info("delivery agent %s stopped", self.worker)

    async def _recorder(self) -> None:
        """Record outcomes as they arrive; those arriving during a commit share the next one."""
        assert self._have_results is not None and self._progress is not None
        while True:
            await self._have_results.wait()
            self._have_results.clear()
            results, self._results = self._results, []
            if results:
                try:
                    await asyncio.to_thread(self._record, results, self.relays.take_loops())
                except Exception:
                    # The rows stay leased: taken again after the lease, never lost.
                    log.exception("recording %d delivery outcome(s) failed", len(results))
                self._in_hand -= len(results)
                self._progress.set()
            if self._stopping and not self._results:
                return

    async def _housekeeping(self) -> None:
        now = self.clock()
        last = self._last_housekeeping
        if last is not None and (now - last).total_seconds() < _HOUSEKEEPING_SECONDS:
            return
        self._last_housekeeping = now
        removed = await asyncio.to_thread(self._clean, now)
        if removed:
            log.info("removed %d orphan spool file(s)", removed)

    def _clean(self, now: dt.datetime) -> int:
        with transaction(self.factory) as s:
            removed = queue.clean_orphans(
                s, spool=self.spool, grace=self.settings.spool_orphan_grace
            )
            keep = dt.timedelta(seconds=self.settings.queue_keep_finished)
            queue.purge_finished(s, before=now - keep)
        return removed

    # ------------------------------------------------------------------ claiming
    async def _claim_and_hand_out(self, limit: int) -> int:
        dispatcher = self._dispatch()
        local, remote, count = await asyncio.to_thread(self._claim, self.clock(), limit)
        self._in_hand += count
        if local:
            task = asyncio.create_task(self._local(local), name="local delivery")
            self._local_tasks.add(task)
            task.add_done_callback(self._local_tasks.discard)
        for domain, jobs in remote.items():
            dispatcher.add(domain, jobs)
        return count

    def _claim(self, now: dt.datetime, limit: int) -> tuple[list[Job], dict[str, list[Job]], int]:
        """Claim, read ahead and sort: (hosted jobs, remote jobs by domain, rows claimed)."""
        with transaction(self.factory) as s:
            claimed = queue.claim_due(
                s,
                worker=self.worker,
                now=now,
                limit=limit,
                lease=self.settings.delivery_lease_seconds,
            )
        if not claimed:
            return [], {}, 0
        data: dict[str, bytes] = {}
        budget = _READ_AHEAD_TOTAL
        for item in claimed:
            if item.spool_id in data or item.size > _READ_AHEAD_MAX or item.size > budget:
                continue
            with contextlib.suppress(SpoolError):
                data[item.spool_id] = self.spool.read(item.spool_id)
                budget -= item.size
        hosted: dict[str, bool] = {}
        groups: dict[tuple[str, int], list[Claimed]] = defaultdict(list)
        with self.factory() as s:
            for item in claimed:
                domain = domain_of(item.address)
                if domain not in hosted:  # hosted or not is a property of the domain
                    hosted[domain] = is_hosted(s, item.address)
                key = ("" if hosted[domain] else domain, item.message_id)
                groups[key].append(item)
        local: list[Job] = []
        remote: dict[str, list[Job]] = defaultdict(list)
        for (domain, _), items in groups.items():
            job = Job(items, data.get(items[0].spool_id))
            (remote[domain] if domain else local).append(job)
        return local, remote, len(claimed)

    # ------------------------------------------------------------------ local
    async def _local(self, jobs: list[Job]) -> None:
        self._emit(await asyncio.to_thread(self._deliver_local, jobs))

    def _deliver_local(self, jobs: list[Job]) -> list[Result]:
        results: list[Result] = []
        now = self.clock()
        for job in jobs:
            try:
                data = job.data if job.data is not None else self.spool.read(job.items[0].spool_id)
            except SpoolError as exc:
                reply = Reply(451, f"4.3.0 {exc}", self.settings.hostname)
                results.extend(Result(item, DEFERRED, reply) for item in job.items)
                continue
            for item in job.items:
                with self.factory() as s:
                    outcome = deliver_local(
                        s, store=self.store, settings=self.settings, item=item, data=data, now=now
                    )
                self.tracking.record_all(outcome.stored)  # the copies are on disk already
                results.append(Result(item, outcome.kind, outcome.reply))
        return results

    # ------------------------------------------------------------------ recording
    def _record(self, results: list[Result], loops: dict[str, str]) -> None:
        """Record outcomes in one transaction; ``loops`` (relay domain -> error) are held in
        it, after their rows' leases are cleared."""
        if not results and not loops:
            return
        now = self.clock()
        groups: dict[tuple[str, Reply, RetrySchedule], list[int]] = defaultdict(list)
        handed_back: dict[dt.datetime, list[int]] = defaultdict(list)
        for r in results:
            if r.kind == HELD:  # handed back held by the lane (RelayRouting.hold_claimed)
                continue
            if r.kind == HANDED_BACK:
                handed_back[r.until or now].append(r.item.recipient_id)
                continue
            groups[(r.kind, r.reply, r.schedule or self.schedule)].append(r.item.recipient_id)
            log.info(
                "qid=%s to=<%s> relay=%s status=%s (%s %s) tls=%s",
                r.item.queue_id,
                r.item.address,
                r.reply.host or "none",
                r.kind,
                r.reply.code,
                r.reply.text,
                r.reply.tls or "-",
            )
        finished: list[str] = []
        with transaction(self.factory) as s:
            for until, ids in handed_back.items():
                queue.postpone(s, recipient_ids=ids, worker=self.worker, until=until)
            notices: list[Notice] = []
            for (kind, reply, schedule), ids in groups.items():
                common = {"recipient_ids": ids, "worker": self.worker, "now": now, "reply": reply}
                if kind == DELIVERED:
                    outcome = queue.record_delivered(s, **common)  # type: ignore[arg-type]
                elif kind == FAILED:
                    outcome = queue.record_failed(s, **common)  # type: ignore[arg-type]
                else:
                    outcome = queue.record_deferred(s, **common, schedule=schedule)  # type: ignore[arg-type]
                notices.extend(outcome.notices)
                finished.extend(outcome.finished_spool_ids)
            RelayRouting.hold_for_loops(s, loops)
            bounces: dict[str, str] = {}
            self._queue_dsns(s, notices, now, bounces)
        attempts = [r for r in results if r.kind not in (HANDED_BACK, HELD)]
        self.tracking.record_all(tracked.round_events(attempts, notices, bounces))
        for r in attempts:  # after the commit: what was recorded
            result = {DELIVERED: "delivered", FAILED: "bounced"}.get(r.kind, "deferred")
            metrics.delivery_outcome(result, queued_at=r.item.created_at, final=r.kind != DEFERRED)
        for spool_id in finished:
            self.spool.remove(spool_id)

    def _queue_dsns(
        self, session: Session, notices: list[Notice], now: dt.datetime, bounces: dict[str, str]
    ) -> None:
        """One DSN per message and kind (failed / delayed) listing its recipients."""
        grouped: dict[tuple[int, bool], list[Notice]] = defaultdict(list)
        for n in notices:
            grouped[(n.message_id, n.action == "failed")].append(n)
        for group in grouped.values():
            first = group[0]
            try:
                headers = self.spool.read_headers(first.spool_id)
            except SpoolError:
                headers = b""
            data = build_dsn(
                reporting_mta=self.settings.hostname,
                to=first.sender,
                queue_id=first.queue_id,
                arrival=first.created_at,
                recipients=[
                    DsnRecipient(
                        address=n.address,
                        action=n.action,
                        status=n.status,
                        diagnostic=f"{n.reply.code} {n.reply.text}" if n.reply else None,
                        remote_mta=n.reply.host if n.reply else None,
                        last_attempt=n.last_attempt_at,
                        will_retry_until=n.retry_until,
                    )
                    for n in group
                ],
                original_headers=headers,
                now=now,
            )
            file = self.spool.write([data])
            bounce = queue.enqueue(
                session,
                spool_id=file.spool_id,
                size=file.size,
                sender="",
                recipients=[first.sender],
                origin=ORIGIN_BOUNCE,
                now=now,
            )
            bounces[first.queue_id] = bounce.queue_id
            log.info(
                "qid=%s: %s notification queued as %s",
                first.queue_id,
                first.action,
                bounce.queue_id,
            )


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Until the first of ``waits`` finishes; the others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
