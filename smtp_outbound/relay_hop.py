"""Delivery to a relay domain's next hop: the routing override, its retry schedule (the
domain's maximum queue age), hold and loop handling. The agent calls ``RelayRouting`` for
every destination; a hosted or remote domain gets None and the MX route as before.

Decisions: mail of one relay domain goes over one connection at a time, oldest first (the
customer's server gets it in the order it arrived); the destination backoff does not apply
(ETRN or a flush must be able to start delivery at once; each row still waits for its own
retry time). A next hop greeting with our own host name is a loop: the domain is held with
that error for the operator, and its mail waits.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections import defaultdict

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.errors import ValidationError
from app.services import queue, relay, relay_queue
from app.services.queue import Claimed, RetrySchedule
from app.services.relay import RelayInfo
from app.services.relay_hop import HopUnresolved, async_resolver, hop_hosts, parse_next_hop
from smtp_outbound.routing import Host


@dataclasses.dataclass(frozen=True, slots=True)
class RelayRoute:
    info: RelayInfo
    hosts: tuple[Host, ...]  # empty: ``error`` says why
    port: int | None
    require_tls: bool
    schedule: RetrySchedule
    error: str = ""


class RelayRouting:
    def __init__(
        self, settings: Settings, factory: sessionmaker[Session], schedule: RetrySchedule
    ) -> None:
        self.settings = settings
        self.factory = factory
        self.schedule = schedule
        self._resolver = async_resolver(settings)
        # relay domain -> loop error, set by the scheduler's lane on the event loop; the agent
        # takes them with the outcomes they go with and holds the domains when recording.
        self.loops: dict[str, str] = {}

    def take_loops(self) -> dict[str, str]:
        loops, self.loops = self.loops, {}
        return loops

    def _info(self, domain: str) -> RelayInfo | None:
        with self.factory() as s:
            return relay.relay_info(s, domain_name=domain)

    async def route(self, domain: str) -> RelayRoute | None:
        """None for a domain that is no relay domain."""
        info = await asyncio.to_thread(self._info, domain)
        if info is None:
            return None
        schedule = dataclasses.replace(self.schedule, max_age=float(info.max_queue_age))
        try:
            hop = parse_next_hop(info.next_hop)
            found = await hop_hosts(
                hop, resolver=self._resolver, default_port=self.settings.delivery_port
            )
        except (HopUnresolved, ValidationError) as exc:
            return RelayRoute(info, (), None, False, schedule, f"4.4.3 {exc}")
        by_name: dict[str, list[str]] = defaultdict(list)
        for h in found:
            by_name[h.name].append(h.address)
        return RelayRoute(
            info=info,
            hosts=tuple(Host(name, tuple(addresses)) for name, addresses in by_name.items()),
            port=found[0].port,
            require_tls=info.tls_policy == "required",
            schedule=schedule,
        )

    def hold_claimed(
        self, domain: str, items: list[Claimed], worker: str, now: dt.datetime
    ) -> None:
        """Rows claimed for a domain that is held: hand them back untried, held."""
        with transaction(self.factory) as s:
            queue.postpone(
                s, recipient_ids=[i.recipient_id for i in items], worker=worker, until=now
            )
            relay_queue.hold_rows(s, domain_name=domain)

    @staticmethod
    def hold_for_loops(session: Session, loops: dict[str, str]) -> None:
        """In the round's recording transaction (after the rows' leases are cleared)."""
        for domain, error in loops.items():
            relay.hold_for_loop(session, domain_name=domain, error=error)
