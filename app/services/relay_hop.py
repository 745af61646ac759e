"""A relay domain's next hop: parsing ``host[:port]`` / ``[address]:port`` / ``mx:hostname``,
and refusing a hop that is Mailhost itself (a mail loop)."""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from app.config import Settings
from app.errors import ValidationError
from app.services.addresses import normalise_domain

HOP_HOST = "host"  # deliver to this host (its A/AAAA), no MX lookup
HOP_MX = "mx"  # deliver to the MX hosts of this name
_PORTED = re.compile(r"^(?P<host>[^:\[\]]+|\[[^\]]+\])(?::(?P<port>\d{1,5}))?$")


@dataclass(frozen=True, slots=True)
class NextHop:
    kind: str  # HOP_HOST or HOP_MX
    host: str  # IDNA host name, or an IP address (no brackets)
    port: int | None = None  # None: the delivery port (Settings.delivery_port, 25)

    @property
    def is_address(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    def __str__(self) -> str:
        if self.kind == HOP_MX:
            return f"mx:{self.host}"
        host = f"[{self.host}]" if self.is_address and ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def parse_next_hop(text: str, *, field: str = "next_hop") -> NextHop:
    """``mail.example.com``, ``mail.example.com:2525``, ``192.0.2.7:25``, ``[2001:db8::7]:25``
    or ``mx:example.com``; ValidationError with the accepted forms otherwise."""
    raw = text.strip()
    forms = "use host, host:port, [address]:port or mx:hostname"
    if not raw:
        raise ValidationError(f"a next hop is required ({forms})", field=field)
    if raw.lower().startswith("mx:"):
        return NextHop(HOP_MX, _host_name(raw[3:], text, forms, field))
    found = _PORTED.match(raw)
    if found is None:
        raise ValidationError(f"invalid next hop {text!r} ({forms})", field=field)
    host, port_text = found.group("host"), found.group("port")
    port: int | None = None
    if port_text is not None:
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValidationError(f"next hop port {port} is not 1-65535", field=field)
    if host.startswith("["):
        try:
            address = ipaddress.ip_address(host[1:-1])
        except ValueError as exc:
            raise ValidationError(f"invalid address in next hop {text!r}", field=field) from exc
        return NextHop(HOP_HOST, str(address), port)
    try:
        return NextHop(HOP_HOST, str(ipaddress.ip_address(host)), port)
    except ValueError:
        return NextHop(HOP_HOST, _host_name(host, text, forms, field), port)


def _host_name(name: str, text: str, forms: str, field: str) -> str:
    try:
        return normalise_domain(name, field=field)
    except ValidationError as exc:
        raise ValidationError(
            f"invalid next hop {text!r}: {exc.message} ({forms})", field=field
        ) from exc


# A check run before a next hop is stored: raises ValidationError for a hop that is us.
HopCheck = Callable[[NextHop], None]


def _resolve_addresses(resolver: dns.resolver.Resolver, name: str) -> list[str]:
    found: list[str] = []
    for rtype in ("A", "AAAA"):
        try:
            found.extend(rr.to_text() for rr in resolver.resolve(name, rtype, search=False))
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            continue
    return found


def _mx_names(resolver: dns.resolver.Resolver, name: str) -> list[str]:
    try:
        answer = resolver.resolve(name, "MX", search=False)
    except dns.resolver.NoAnswer:
        return [name]  # implicit MX (RFC 5321 section 5.1)
    except dns.resolver.NXDOMAIN:
        return []
    return [rr.exchange.to_text(omit_final_dot=True).lower() for rr in answer]


def self_check(
    *,
    own_names: Iterable[str],
    own_endpoints: Iterable[tuple[str, int]],
    default_port: int,
    resolver: dns.resolver.Resolver,
) -> HopCheck:
    """A HopCheck refusing a hop whose host (or, for ``mx:``, one of whose MX hosts) is one of
    ``own_names`` or resolves to one of ``own_endpoints`` (address, port). A name that does not
    resolve (yet) is accepted: the delivery agent still detects a loop by the greeting."""
    names = {n.lower().rstrip(".") for n in own_names if n}
    endpoints = {(str(ipaddress.ip_address(a)), p) for a, p in own_endpoints}

    def check(hop: NextHop) -> None:
        port = hop.port if hop.port is not None else default_port
        try:
            hosts = _mx_names(resolver, hop.host) if hop.kind == HOP_MX else [hop.host]
            for host in hosts:
                if host in names:
                    raise ValidationError(
                        f"next hop {hop} is this platform ({host}): that would be a mail loop",
                        field="next_hop",
                    )
                try:
                    addresses = [str(ipaddress.ip_address(host))]
                except ValueError:
                    addresses = _resolve_addresses(resolver, host)
                for address in addresses:
                    if (address, port) in endpoints:
                        raise ValidationError(
                            f"next hop {hop} resolves to this platform's MX "
                            f"({address} port {port}): that would be a mail loop",
                            field="next_hop",
                        )
        except dns.exception.DNSException:
            return

    return check


def hop_checker(settings: Settings) -> HopCheck:
    """The HopCheck for this platform: our host names (Settings.hostname, mx_hostname) and our
    MX endpoints (smtp_host:smtp_port when it is an address, and every
    Settings.relay_own_addresses on the MX port and on port 25)."""
    resolver = dns.resolver.Resolver(configure=not settings.delivery_nameservers)
    if settings.delivery_nameservers:
        resolver.nameservers = list(settings.delivery_nameservers)
        resolver.port = settings.delivery_dns_port
    resolver.lifetime = settings.delivery_dns_timeout
    endpoints: list[tuple[str, int]] = []
    try:
        listen = ipaddress.ip_address(settings.smtp_host)
    except ValueError:
        listen = None
    if listen is not None and not listen.is_unspecified:
        endpoints.append((str(listen), settings.smtp_port))
    for address in settings.relay_own_addresses:
        endpoints.extend([(address, settings.smtp_port), (address, 25)])
    return self_check(
        own_names=(settings.hostname, settings.mx_hostname),
        own_endpoints=endpoints,
        default_port=settings.delivery_port,
        resolver=resolver,
    )


# --- where a hop's mail goes (the MX's callout and the delivery agent share this) -----------


@dataclass(frozen=True, slots=True)
class HopHost:
    name: str  # the host name (the MX exchange, or the hop's host), for TLS and logs
    address: str
    port: int


class HopUnresolved(Exception):  # noqa: N818
    """The hop has no usable address now (DNS failure, no address): always temporary for a
    relay domain, whose mail waits up to its maximum queue age."""


def async_resolver(settings: Settings) -> dns.asyncresolver.Resolver:
    """The resolver the delivery agent uses (Settings.delivery_nameservers, else the system's)."""
    if settings.delivery_nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = list(settings.delivery_nameservers)
        resolver.port = settings.delivery_dns_port
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = settings.delivery_dns_timeout
    resolver.cache = dns.resolver.LRUCache(max_size=10_000)
    return resolver


async def _addresses_of(resolver: dns.asyncresolver.Resolver, name: str) -> list[str]:
    found: list[str] = []
    for rtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(name, rtype, search=False)
        except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
            continue
        found.extend(rr.to_text() for rr in answer)
    return found


async def hop_hosts(
    hop: NextHop, *, resolver: dns.asyncresolver.Resolver, default_port: int
) -> list[HopHost]:
    """The (host, address, port) to try in order: the hop's own address(es) for a host hop,
    the MX hosts of the name by preference (RFC 5321 section 5.1) for an ``mx:`` hop.
    Raises HopUnresolved."""
    port = hop.port if hop.port is not None else default_port
    if hop.is_address:
        return [HopHost(hop.host, hop.host, port)]
    try:
        if hop.kind == HOP_HOST:
            names = [hop.host]
        else:
            try:
                answer = await resolver.resolve(hop.host, "MX", search=False)
            except dns.resolver.NoAnswer:
                names = [hop.host]  # implicit MX
            else:
                records = [
                    (rr.preference, rr.exchange.to_text(omit_final_dot=True)) for rr in answer
                ]
                random.shuffle(records)  # equal preferences in random order
                records.sort(key=lambda r: r[0])
                names = [n for _, n in records if n not in ("", ".")]
        hosts: list[HopHost] = []
        for name in names:
            hosts.extend(HopHost(name, a, port) for a in await _addresses_of(resolver, name))
    except dns.exception.DNSException as exc:
        raise HopUnresolved(f"DNS lookup for next hop {hop} failed: {exc}") from exc
    if not hosts:
        raise HopUnresolved(f"next hop {hop} has no address")
    return hosts
