"""The delivery agent: claim due queue rows, deliver them (locally or by SMTP), record, bounce.

Theory of operation: each round claims up to ``delivery_batch_size`` due rows with a lease
(``app.services.queue.claim_due``). Rows for hosted addresses are stored in the Maildir; the
rest are grouped by recipient domain, and each destination gets one task that looks up its
route, opens one connection to the first MX host that answers and sends every message of the
group over it (several recipients of one message in one transaction), trying the next host
when a connection fails; a destination with many messages in the round gets several such
connections in parallel. At most ``delivery_destination_concurrency`` connections go to one
domain and ``delivery_concurrency`` in all. A destination whose hosts all failed is left
alone for ``delivery_destination_backoff`` seconds: its rows are handed back untried. The
outcomes of a whole round are recorded in one transaction that also queues the DSNs they
call for (RFC 3464; the DSN file is spooled before that commit, so a crash leaves only an
orphan file); the spool files of finished messages are removed after it. Database and file
work runs in threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import secrets
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import aiosmtplib
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
from smtp_outbound import client
from smtp_outbound.local import deliver_local, is_hosted
from smtp_outbound.routing import Host, Router

log = logging.getLogger("mailhost.outbound")

DELIVERED, DEFERRED, FAILED = "delivered", "deferred", "failed"
_HOUSEKEEPING_SECONDS = 300.0
# Below this many messages for one destination in a round, one connection carries them all.
_PER_CONNECTION = 4


@dataclass(frozen=True, slots=True)
class Result:
    item: Claimed
    kind: str
    reply: Reply


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _lanes(items: list[Claimed], connections: int) -> list[list[Claimed]]:
    """Split one destination's rows over up to ``connections`` connections, each message
    (all its recipients there) whole in one lane, at least ``_PER_CONNECTION`` messages per
    lane, so a busy destination gets parallel connections and a quiet one a single one."""
    jobs: dict[int, list[Claimed]] = defaultdict(list)
    for item in items:
        jobs[item.message_id].append(item)
    messages = list(jobs.values())
    count = max(1, min(connections, len(messages) // _PER_CONNECTION))
    return [[i for job in messages[n::count] for i in job] for n in range(count)]


def _kind(code: int) -> str:
    if 200 <= code < 300:
        return DELIVERED
    return FAILED if 500 <= code < 600 else DEFERRED


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
        self.tls_memory = client.TLSMemory()
        self.backoff: dict[str, dt.datetime] = {}
        self._dest_limits: dict[str, asyncio.Semaphore] = {}
        self._limit: asyncio.Semaphore | None = None
        self._last_housekeeping: dt.datetime | None = None

    # ------------------------------------------------------------------ rounds
    async def run_once(self) -> int:
        """One round: claim due rows, deliver them all, record. Returns how many were claimed."""
        if self._limit is None:
            self._limit = asyncio.Semaphore(self.settings.delivery_concurrency)
        now = self.clock()
        claimed = await asyncio.to_thread(self._claim, now)
        if not claimed:
            return 0
        local, remote = await asyncio.to_thread(self._split_hosted, claimed)
        results: list[Result] = []
        if local:
            results.extend(await asyncio.to_thread(self._deliver_local, local))
        by_domain: dict[str, list[Claimed]] = defaultdict(list)
        for item in remote:
            by_domain[_domain(item.address)].append(item)
        for found in await asyncio.gather(
            *(self._destination(d, items) for d, items in by_domain.items())
        ):
            results.extend(found)
        # One transaction records the whole round (bench/delivery.py: one commit per
        # destination was the round's main cost on SQLite). A crash before it leaves the rows
        # leased: taken again after the lease, sent twice at worst, never lost.
        await asyncio.to_thread(self._record, results)
        return len(claimed)

    async def run(self, stop: asyncio.Event) -> None:
        """Rounds until ``stop`` is set; a round that found nothing waits for the poll interval."""
        log.info("delivery agent %s started", self.worker)
        while not stop.is_set():
            try:
                handled = await self.run_once()
                await self._housekeeping()
            except Exception:
                log.exception("delivery round failed")
                handled = 0
            if not handled:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.delivery_poll_interval)
        log.info("delivery agent %s stopped", self.worker)

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

    def _claim(self, now: dt.datetime) -> list[Claimed]:
        with transaction(self.factory) as s:
            return queue.claim_due(
                s,
                worker=self.worker,
                now=now,
                limit=self.settings.delivery_batch_size,
                lease=self.settings.delivery_lease_seconds,
            )

    def _split_hosted(self, claimed: list[Claimed]) -> tuple[list[Claimed], list[Claimed]]:
        local: list[Claimed] = []
        remote: list[Claimed] = []
        with self.factory() as s:
            for item in claimed:
                (local if is_hosted(s, item.address) else remote).append(item)
        return local, remote

    # ------------------------------------------------------------------ local
    def _deliver_local(self, items: list[Claimed]) -> list[Result]:
        results: list[Result] = []
        now = self.clock()
        for item in items:
            try:
                data = self.spool.read(item.spool_id)
            except SpoolError as exc:
                reply = Reply(451, f"4.3.0 {exc}", self.settings.hostname)
                results.append(Result(item, DEFERRED, reply))
                continue
            with self.factory() as s:
                kind, reply = deliver_local(
                    s,
                    store=self.store,
                    hostname=self.settings.hostname,
                    item=item,
                    data=data,
                    now=now,
                    postmaster_address=self.settings.postmaster_address,
                )
            results.append(Result(item, kind, reply))
        return results

    # ------------------------------------------------------------------ remote
    async def _destination(self, domain: str, items: list[Claimed]) -> list[Result]:
        """Deliver one domain's rows; returns the outcomes for the round to record."""
        now = self.clock()
        until = self.backoff.get(domain)
        if until is not None and until > now:
            await asyncio.to_thread(self._postpone, items, until)
            return []
        route = await self.router.route(domain)
        if not route.hosts:
            code = 550 if route.permanent else 451
            reply = Reply(code, f"{route.status} {route.error}", None)
            kind = FAILED if route.permanent else DEFERRED
            return [Result(i, kind, reply) for i in items]
        limit = self._dest_limits.setdefault(
            domain, asyncio.Semaphore(self.settings.delivery_destination_concurrency)
        )
        assert self._limit is not None
        lanes = _lanes(items, self.settings.delivery_destination_concurrency)

        async def lane(chunk: list[Claimed]) -> list[Result]:
            assert self._limit is not None
            async with limit, self._limit:
                return await self._send_all(domain, route.hosts, chunk)

        found = await asyncio.gather(*(lane(chunk) for chunk in lanes))
        return [result for chunk_results in found for result in chunk_results]

    async def _send_all(
        self, domain: str, hosts: tuple[Host, ...], items: list[Claimed]
    ) -> list[Result]:
        jobs: dict[int, list[Claimed]] = defaultdict(list)
        for item in items:
            jobs[item.message_id].append(item)
        pending = list(jobs.values())
        results: list[Result] = []
        last = Reply(451, "4.4.1 no host tried", None)
        for host in hosts:
            for address in host.addresses:
                if not pending:
                    break
                try:
                    conn = await client.connect(self.settings, host.name, address, self.tls_memory)
                except client.ConnectFailure as exc:
                    last = exc.reply
                    log.info("%s[%s]: %s %s", host.name, address, exc.reply.code, exc.reply.text)
                    continue
                try:
                    while pending:
                        job = pending[0]
                        try:
                            data = await asyncio.to_thread(self.spool.read, job[0].spool_id)
                        except SpoolError as exc:
                            reply = Reply(451, f"4.3.0 {exc}", None)
                            results.extend(Result(i, DEFERRED, reply) for i in job)
                            pending.pop(0)
                            continue
                        refused, data_reply = await client.send(
                            conn,
                            sender=job[0].sender,
                            recipients=[i.address for i in job],
                            data=data,
                        )
                        for item in job:
                            got = refused.get(item.address) or data_reply
                            assert got is not None
                            results.append(Result(item, _kind(got.code), got))
                        pending.pop(0)
                except (aiosmtplib.SMTPException, OSError) as exc:
                    # The connection broke mid-message: that message goes to the next host.
                    last = conn.reply(421, f"4.4.2 connection lost: {exc}")
                    conn.smtp.close()
                    continue
                await conn.close()
        if pending:
            self.backoff[domain] = self.clock() + dt.timedelta(
                seconds=self.settings.delivery_destination_backoff
            )
            results.extend(Result(i, DEFERRED, last) for job in pending for i in job)
        return results

    def _postpone(self, items: list[Claimed], until: dt.datetime) -> None:
        with transaction(self.factory) as s:
            queue.postpone(
                s, recipient_ids=[i.recipient_id for i in items], worker=self.worker, until=until
            )

    # ------------------------------------------------------------------ recording
    def _record(self, results: list[Result]) -> None:
        if not results:
            return
        now = self.clock()
        groups: dict[tuple[str, Reply], list[int]] = defaultdict(list)
        for r in results:
            groups[(r.kind, r.reply)].append(r.item.recipient_id)
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
            notices: list[Notice] = []
            for (kind, reply), ids in groups.items():
                common = {"recipient_ids": ids, "worker": self.worker, "now": now, "reply": reply}
                if kind == DELIVERED:
                    outcome = queue.record_delivered(s, **common)  # type: ignore[arg-type]
                elif kind == FAILED:
                    outcome = queue.record_failed(s, **common)  # type: ignore[arg-type]
                else:
                    outcome = queue.record_deferred(s, **common, schedule=self.schedule)  # type: ignore[arg-type]
                notices.extend(outcome.notices)
                finished.extend(outcome.finished_spool_ids)
            self._queue_dsns(s, notices, now)
        for r in results:  # after the commit: what was recorded
            result = {DELIVERED: "delivered", FAILED: "bounced"}.get(r.kind, "deferred")
            metrics.delivery_outcome(result, queued_at=r.item.created_at, final=r.kind != DEFERRED)
        for spool_id in finished:
            self.spool.remove(spool_id)

    def _queue_dsns(self, session: Session, notices: list[Notice], now: dt.datetime) -> None:
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
            log.info(
                "qid=%s: %s notification queued as %s",
                first.queue_id,
                first.action,
                bounce.queue_id,
            )
