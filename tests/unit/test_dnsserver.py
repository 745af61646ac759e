"""The test DNS server answers dnspython as an authoritative server would (MX, A, TXT, NXDOMAIN)."""

from __future__ import annotations

import asyncio

import dns.asyncresolver
import dns.resolver
import pytest

from tests.dnsserver import TestDNSServer


def _resolver(server: TestDNSServer, tcp: bool = False) -> dns.asyncresolver.Resolver:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.port = server.port
    resolver.lifetime = 3
    return resolver


def test_mx_a_txt_and_missing_names(dns_server: TestDNSServer) -> None:
    zone = dns_server.zone
    zone.mx("remote.example", (20, "mx2.remote.example"), (10, "mx1.remote.example"))
    zone.a("mx1.remote.example", "127.0.0.2")
    zone.txt("sel._domainkey.remote.example", "v=DKIM1; p=" + "A" * 400)
    zone.null_mx("nomail.example")
    zone.exists("bare.example")

    async def run() -> None:
        resolver = _resolver(dns_server)
        mx = await resolver.resolve("remote.example", "MX")
        assert sorted((r.preference, r.exchange.to_text()) for r in mx) == [
            (10, "mx1.remote.example."),
            (20, "mx2.remote.example."),
        ]
        a = await resolver.resolve("mx1.remote.example", "A")
        assert [r.address for r in a] == ["127.0.0.2"]
        txt = await resolver.resolve("sel._domainkey.remote.example", "TXT", tcp=True)
        assert b"".join(next(iter(txt)).strings) == b"v=DKIM1; p=" + b"A" * 400
        null = await resolver.resolve("nomail.example", "MX")
        assert [(r.preference, r.exchange.to_text()) for r in null] == [(0, ".")]
        with pytest.raises(dns.resolver.NXDOMAIN):
            await resolver.resolve("unknown.example", "MX")
        with pytest.raises(dns.resolver.NoAnswer):
            await resolver.resolve("bare.example", "MX")

    asyncio.run(run())
