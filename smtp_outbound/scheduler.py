"""The continuous scheduler of remote deliveries: per-destination queues, lanes and limits.

Theory of operation: the agent hands claimed work to ``Dispatcher.add`` as jobs (one message's
recipients at one domain). Each destination has a FIFO of jobs and at most
``delivery_destination_concurrency`` lanes; a lane is one task that looks up the route, opens
one connection to the first MX host that answers and sends job after job over it while the
FIFO has any (one connection reused for many messages), going on to the next host when a
connection fails or breaks mid-message. A destination gets a second (third ...) lane when more
than ``_PER_CONNECTION`` jobs wait per open lane. At most ``delivery_concurrency`` lanes send
at once in all; a destination with work and no lane is served first when a slot frees up.

Nothing waits for the slowest destination: each job's outcomes go to ``emit`` as soon as it is
done, and the agent records them and claims more work while other destinations are still being
served. In the continuous mode a lane whose FIFO ran dry keeps its connection open for
``linger`` seconds without holding a slot (Postfix's connection cache keeps idle connections
for 2 s), so the next claim's messages to that destination reuse it.

A destination whose hosts all failed is backed off for ``delivery_destination_backoff``
seconds: its waiting jobs are deferred with the last reply, and jobs that arrive during the
backoff are handed back untried. A job whose lease is nearly over is handed back untried too
(another worker may take it once the lease expires; sending it now could double it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiosmtplib

from app.config import Settings
from app.services.queue import Claimed, Reply, RetrySchedule
from app.spool import SpoolError, SpoolStore
from smtp_outbound import client
from smtp_outbound.routing import Host, Router

if TYPE_CHECKING:
    from smtp_outbound.relay_hop import RelayRoute, RelayRouting

log = logging.getLogger("mailhost.outbound")

DELIVERED, DEFERRED, FAILED, HANDED_BACK = "delivered", "deferred", "failed", "handed back"
# A held relay domain's rows: already handed back held (RelayRouting.hold_claimed), nothing to
# record; the result only tells the agent they are out of its hands.
HELD = "held"
# A destination gets one more connection per this many waiting messages.
_PER_CONNECTION = 4
# A job is handed back untried when less than this share of its lease is left.
_LEASE_MARGIN = 0.1


@dataclass(frozen=True, slots=True)
class Result:
    item: Claimed
    kind: str
    reply: Reply
    until: dt.datetime | None = None  # HANDED_BACK: when it may be tried again
    schedule: RetrySchedule | None = None  # a relay domain's own maximum age


@dataclass(slots=True)
class Job:
    """One message's recipients at one destination, with the message when it was read ahead."""

    items: list[Claimed]
    data: bytes | None = None


def kind_of(code: int) -> str:
    if 200 <= code < 300:
        return DELIVERED
    return FAILED if 500 <= code < 600 else DEFERRED


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


class Dispatcher:
    """The destinations of one agent: FIFOs, lanes, the global and per-destination limits."""

    def __init__(
        self,
        settings: Settings,
        *,
        spool: SpoolStore,
        router: Router,
        tls_memory: client.TLSMemory,
        clock: Callable[[], dt.datetime],
        emit: Callable[[list[Result]], None],
        lease_seconds: float,
        relays: RelayRouting | None = None,
        worker: str = "",
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.router = router
        self.tls_memory = tls_memory
        self.clock = clock
        self.emit = emit
        self.linger = 0.0
        self.backoff: dict[str, dt.datetime] = {}
        self._margin = dt.timedelta(seconds=lease_seconds * _LEASE_MARGIN)
        self._pending: dict[str, deque[Job]] = {}
        self._lanes: dict[str, int] = {}  # open lanes (connections) per destination
        self._busy = 0  # lanes holding a sending slot
        # Idle lanes with new work waiting for a slot, first come first served: a freed slot
        # is handed to the first of them directly (no herd of waiters waking on each release).
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._arrivals: dict[str, asyncio.Event] = {}  # wakes a lingering lane
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.relays = relays
        self.worker = worker
        self._relay_lanes: set[str] = set()  # relay domains being served (one lane each)
        self._schedules: dict[str, RetrySchedule] = {}  # relay domains' retry schedules

    # ------------------------------------------------------------------ intake
    def add(self, domain: str, jobs: list[Job]) -> None:
        self._pending.setdefault(domain, deque()).extend(jobs)
        self._idle.clear()
        waiting = self._arrivals.get(domain)
        if waiting is not None:
            waiting.set()
        self._fill()

    def _fill(self) -> None:
        """Open lanes: first for destinations with work and none, then extra ones."""
        total = self.settings.delivery_concurrency
        per_destination = self.settings.delivery_destination_concurrency
        for extra in (False, True):
            for domain, jobs in list(self._pending.items()):
                lanes = self._lanes.get(domain, 0)
                while (
                    jobs
                    and self._busy + len(self._slot_waiters) < total
                    and lanes < per_destination
                    and (lanes > 0) == extra
                    and domain not in self._relay_lanes
                    and (lanes == 0 or len(jobs) > _PER_CONNECTION * lanes)
                ):
                    self._start(domain)
                    lanes += 1
                    if not extra:
                        break
        self._check_idle()

    def _start(self, domain: str) -> None:
        self._lanes[domain] = self._lanes.get(domain, 0) + 1
        self._busy += 1
        task = asyncio.create_task(self._lane(domain), name=f"lane {domain}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _release_slot(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to it: _busy is unchanged
                return
        self._busy -= 1

    async def _regain_slot(self, domain: str, jobs: deque[Job], deadline: float) -> bool:
        """An idle lane waits for new work and a slot until ``deadline``; True when it has both."""
        loop = asyncio.get_running_loop()
        arrived = self._arrivals.setdefault(domain, asyncio.Event())
        total = self.settings.delivery_concurrency
        while not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            if not jobs:
                arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(arrived.wait(), remaining)
                continue
            if self._busy < total and not self._slot_waiters:
                self._busy += 1
                return True
            waiter: asyncio.Future[None] = loop.create_future()
            self._slot_waiters.append(waiter)
            await asyncio.wait({waiter}, timeout=remaining)
            if waiter.done() and not waiter.cancelled():
                return True  # handed a slot
            waiter.cancel()
            with contextlib.suppress(ValueError):
                self._slot_waiters.remove(waiter)
            return False
        return False

    def _check_idle(self) -> None:
        if not self._lanes and not any(self._pending.values()):
            self._pending.clear()
            self._idle.set()

    async def wait_idle(self) -> None:
        """Until every job handed in has an outcome."""
        await self._idle.wait()

    async def close(self) -> None:
        """Stop: waiting jobs are handed back at once, lanes finish the message they send."""
        self._closing = True
        for domain in list(self._pending):
            self._hand_back(domain, self.clock())
        for event in self._arrivals.values():
            event.set()
        for waiter in self._slot_waiters:
            waiter.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ lanes
    async def _lane(self, domain: str) -> None:
        holding = True
        try:
            holding = await self._serve(domain)
        except Exception:
            log.exception("delivery to %s failed", domain)
            self._defer_all(domain, Reply(451, "4.3.0 internal error in the delivery agent"))
        finally:
            if holding:
                self._release_slot()
            self._lanes[domain] -= 1
            if not self._lanes[domain]:
                del self._lanes[domain]
                self._arrivals.pop(domain, None)
                if not self._pending.get(domain):
                    self._pending.pop(domain, None)
            self._fill()

    async def _serve(self, domain: str) -> bool:
        """Deliver the destination's FIFO; returns whether the lane still holds its slot."""
        jobs = self._pending[domain]
        relay_route = await self.relays.route(domain) if self.relays is not None else None
        if relay_route is not None:
            return await self._serve_relay(domain, jobs, relay_route)
        until = self.backoff.get(domain)
        if until is not None and until > self.clock():
            self._hand_back(domain, until)
            return True
        route = await self.router.route(domain)
        if not route.hosts:
            code = 550 if route.permanent else 451
            reply = Reply(code, f"{route.status} {route.error}", None)
            self._take_all(domain, FAILED if route.permanent else DEFERRED, reply)
            return True
        holding, last, _ = await self._try_hosts(domain, jobs, route.hosts)
        if not holding:
            return False
        if jobs:
            self.backoff[domain] = self.clock() + dt.timedelta(
                seconds=self.settings.delivery_destination_backoff
            )
            self._defer_all(domain, last)
        return True

    async def _serve_relay(self, domain: str, jobs: deque[Job], route: RelayRoute) -> bool:
        """A relay domain (smtp_outbound/relay_hop.py): its next hop, one lane and connection,
        oldest message first, no destination backoff; held: handed back held, untried."""
        assert self.relays is not None
        if domain in self._relay_lanes:
            return True  # one connection per relay domain: the lane serving it takes these
        self._relay_lanes.add(domain)
        self._schedules[domain] = route.schedule
        try:
            if route.info.held:
                await self._hold(domain, jobs)
                return True
            ordered = sorted(jobs, key=lambda j: (j.items[0].message_id, j.items[0].recipient_id))
            jobs.clear()
            jobs.extend(ordered)
            if not route.hosts:
                self._defer_all(domain, Reply(451, route.error, None))
                return True
            holding, last, loop = await self._try_hosts(
                domain, jobs, route.hosts, port=route.port, require_tls=route.require_tls
            )
            if loop:  # recorded with (never before) the rows' outcomes, so they are held too
                self.relays.loops[domain] = loop
            if jobs:
                self._defer_all(domain, last)
            return holding
        finally:
            self._relay_lanes.discard(domain)
            self._schedules.pop(domain, None)

    async def _hold(self, domain: str, jobs: deque[Job]) -> None:
        assert self.relays is not None
        items = [i for job in jobs for i in job.items]
        jobs.clear()
        try:
            await asyncio.to_thread(
                self.relays.hold_claimed, domain, items, self.worker, self.clock()
            )
        except Exception:
            log.exception("holding the rows of %s failed", domain)
            self._out(domain, [Result(i, DEFERRED, Reply(451, "4.3.0 hold failed")) for i in items])
            return
        self._out(domain, [Result(i, HELD, Reply(0, "")) for i in items])

    async def _try_hosts(
        self,
        domain: str,
        jobs: deque[Job],
        hosts: tuple[Host, ...],
        *,
        port: int | None = None,
        require_tls: bool = False,
    ) -> tuple[bool, Reply, str]:
        """Send the FIFO over the first host that answers (the next on failure): whether the
        lane still holds its slot, the last failure, and a loop error if a host greeted with
        our own name."""
        last = Reply(451, "4.4.1 no host tried", None)
        loop = ""
        for host in hosts:
            for address in host.addresses:
                if not jobs:
                    return True, last, loop
                try:
                    conn = await client.connect(
                        self.settings,
                        host.name,
                        address,
                        self.tls_memory,
                        port=port,
                        require_tls=require_tls,
                    )
                except client.LoopDetected as exc:
                    last, loop = exc.reply, exc.reply.text
                    log.warning("%s[%s]: %s", host.name, address, exc.reply.text)
                    continue
                except client.ConnectFailure as exc:
                    last = exc.reply
                    log.info("%s[%s]: %s %s", host.name, address, exc.reply.code, exc.reply.text)
                    continue
                try:
                    holding = await self._send_over(domain, jobs, conn)
                except (aiosmtplib.SMTPException, OSError) as exc:
                    # The connection broke mid-message: that message goes to the next host.
                    last = conn.reply(421, f"4.4.2 connection lost: {exc}")
                    conn.smtp.close()
                    continue
                await conn.close()
                if not holding:
                    return False, last, loop
        return True, last, loop

    async def _send_over(self, domain: str, jobs: deque[Job], conn: client.Connection) -> bool:
        """Send jobs over ``conn`` while there are any (lingering for more in the continuous
        mode); returns whether the lane still holds its sending slot."""
        while True:
            while jobs:
                job = jobs.popleft()
                if self.clock() > job.items[0].lease_until - self._margin:
                    self._out(
                        domain,
                        [Result(i, HANDED_BACK, Reply(0, ""), self.clock()) for i in job.items],
                    )
                    continue
                data = job.data
                if data is None:
                    try:
                        data = await asyncio.to_thread(self.spool.read, job.items[0].spool_id)
                    except SpoolError as exc:
                        reply = Reply(451, f"4.3.0 {exc}", None)
                        self._out(domain, [Result(i, DEFERRED, reply) for i in job.items])
                        continue
                try:
                    refused, data_reply = await client.send(
                        conn,
                        sender=job.items[0].sender,
                        recipients=[i.address for i in job.items],
                        data=data,
                    )
                except BaseException:
                    jobs.appendleft(job)
                    raise
                found = []
                for item in job.items:
                    got = refused.get(item.address) or data_reply
                    assert got is not None
                    found.append(Result(item, kind_of(got.code), got))
                self._out(domain, found)
            if self.linger <= 0 or self._closing:
                return True
            # Idle: give the slot back and keep the connection for a while.
            self._release_slot()
            self._fill()
            deadline = asyncio.get_running_loop().time() + self.linger
            if not await self._regain_slot(domain, jobs, deadline):
                return False

    # ------------------------------------------------------------------ outcomes
    def _out(self, domain: str, results: list[Result]) -> None:
        schedule = self._schedules.get(domain)
        if schedule is not None:
            results = [dataclasses.replace(r, schedule=schedule) for r in results]
        self.emit(results)

    def _take_all(self, domain: str, kind: str, reply: Reply) -> None:
        jobs = self._pending.get(domain) or deque()
        found = [Result(i, kind, reply) for job in jobs for i in job.items]
        jobs.clear()
        if found:
            self._out(domain, found)

    def _defer_all(self, domain: str, reply: Reply) -> None:
        self._take_all(domain, DEFERRED, reply)

    def _hand_back(self, domain: str, until: dt.datetime) -> None:
        jobs = self._pending.get(domain) or deque()
        found = [Result(i, HANDED_BACK, Reply(0, ""), until) for job in jobs for i in job.items]
        jobs.clear()
        if found:
            self.emit(found)
