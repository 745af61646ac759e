"""Where mail for a domain goes (RFC 5321 section 5.1): MX hosts by preference, else A/AAAA."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from app.config import Settings

# Cached DNS answers per worker (names, not messages): plenty for every destination of a day.
_CACHE_ENTRIES = 50_000


@dataclass(frozen=True, slots=True)
class Host:
    name: str
    addresses: tuple[str, ...]
    preference: int = 0


@dataclass(frozen=True, slots=True)
class Route:
    """Hosts to try in order; or, when ``hosts`` is empty, why not (``permanent`` or not)."""

    hosts: tuple[Host, ...] = ()
    permanent: bool = False
    error: str = ""
    status: str = "4.4.3"
    implicit: bool = False  # no MX: the domain's own address (implicit MX)


@dataclass(slots=True)
class Router:
    """Asynchronous lookups through dnspython (the system resolver, or the configured one)."""

    settings: Settings
    _resolver: dns.asyncresolver.Resolver = field(init=False)
    # Routes (the MX list with its addresses) until the first of their answers expires:
    # a lane asks for its destination's route each time it starts, and building it from
    # dnspython's cache (MX + A + AAAA per host) cost more than a message (bench/delivery.py).
    _routes: dict[str, tuple[float, Route]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        s = self.settings
        if s.delivery_nameservers:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
            self._resolver.nameservers = list(s.delivery_nameservers)
            self._resolver.port = s.delivery_dns_port
        else:
            self._resolver = dns.asyncresolver.Resolver()
        self._resolver.lifetime = s.delivery_dns_timeout
        # Answers are kept for their TTL (dnspython's cache): without it every round asked
        # MX + A + AAAA again for each destination, and bench/delivery.py spent most of a
        # round waiting for those lookups.
        self._resolver.cache = dns.resolver.LRUCache(max_size=_CACHE_ENTRIES)

    async def _addresses(self, name: str, expiry: list[float]) -> tuple[str, ...]:
        found: list[str] = []
        for rtype in ("A", "AAAA"):
            try:
                answer = await self._resolver.resolve(name, rtype, search=False)
            except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
                continue
            expiry.append(answer.expiration)
            found.extend(rr.to_text() for rr in answer)
        return tuple(found)

    async def route(self, domain: str) -> Route:
        """The route of ``domain``; a route with hosts is reused until its answers expire
        (the order of equal-preference hosts is shuffled again each time)."""
        cached = self._routes.get(domain)
        if cached is not None and cached[0] > time.time():
            hosts = list(cached[1].hosts)
            random.shuffle(hosts)
            hosts.sort(key=lambda h: h.preference)
            return Route(hosts=tuple(hosts), implicit=cached[1].implicit)
        expiry: list[float] = []
        route = await self._lookup(domain, expiry)
        if route.hosts and expiry:
            if len(self._routes) >= _CACHE_ENTRIES:
                self._routes.clear()
            self._routes[domain] = (min(expiry), route)
        return route

    async def _lookup(self, domain: str, expiry: list[float]) -> Route:
        try:
            answer = await self._resolver.resolve(domain, "MX", search=False)
        except dns.resolver.NXDOMAIN:
            return Route(permanent=True, error=f"domain {domain} does not exist", status="5.1.2")
        except dns.resolver.NoAnswer:
            # RFC 5321 section 5.1: no MX, so the domain itself is the implicit MX.
            try:
                addresses = await self._addresses(domain, expiry)
            except dns.exception.DNSException as exc:
                return Route(error=f"DNS lookup of {domain} failed: {exc}")
            if not addresses:
                return Route(
                    permanent=True, error=f"{domain} has no MX and no address", status="5.1.2"
                )
            return Route(hosts=(Host(domain, addresses),), implicit=True)
        except dns.exception.DNSException as exc:
            return Route(error=f"DNS lookup of MX {domain} failed: {exc}")
        expiry.append(answer.expiration)
        records = [(rr.preference, rr.exchange.to_text(omit_final_dot=True)) for rr in answer]
        # RFC 7505 section 3: a single MX with an empty exchange (".") says "no mail here".
        if len(records) == 1 and records[0][1] in ("", "."):
            return Route(
                permanent=True,
                error=f"{domain} accepts no mail (null MX, RFC 7505)",
                status="5.1.10",
            )
        # Equal preferences are tried in random order (RFC 5321 section 5.1), spreading load.
        random.shuffle(records)
        records.sort(key=lambda r: r[0])
        hosts: list[Host] = []
        failures: list[str] = []
        for preference, name in records:
            if name in ("", "."):
                continue
            try:
                addresses = await self._addresses(name, expiry)
            except dns.exception.DNSException as exc:
                failures.append(f"{name}: {exc}")
                continue
            if addresses:
                hosts.append(Host(name, addresses, preference))
            else:
                failures.append(f"{name}: no address")
        if not hosts:
            return Route(error=f"no MX host of {domain} has an address ({'; '.join(failures)})")
        return Route(hosts=tuple(hosts))
