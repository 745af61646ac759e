"""DKIM test helpers: dkimpy's verifier asking the real test DNS server (tests/dnsserver.py)."""

from __future__ import annotations

from typing import Any

import dkim as dkimpy
import dns.resolver

from tests.dnsserver import TestDNSServer


def dnsfunc_for(server: TestDNSServer) -> Any:
    """A ``dnsfunc`` for ``dkim.verify``: TXT lookups over the network to ``server`` with
    dnspython (strings of one record joined, as dkimpy's own lookup does)."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.port = server.port
    resolver.lifetime = 3

    def lookup(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode("ascii"), "TXT")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(next(iter(answer)).strings)

    return lookup


def verify(message: bytes, server: TestDNSServer) -> bool:
    """dkimpy's verdict on the topmost DKIM-Signature, keys from ``server``."""
    return bool(dkimpy.verify(message, dnsfunc=dnsfunc_for(server)))


def signature_tags(message: bytes) -> dict[str, str]:
    """The tags of the topmost DKIM-Signature header field, unfolded."""
    head = message.split(b"\r\n\r\n" if b"\r\n\r\n" in message else b"\n\n", 1)[0]
    text = head.decode("ascii").replace("\r\n", "\n")
    field = text.split("\n")[0]
    for line in text.split("\n")[1:]:
        if line[:1] in (" ", "\t"):
            field += line
        else:
            break
    assert field.lower().startswith("dkim-signature:"), field
    value = field.split(":", 1)[1]
    tags = {}
    for part in value.split(";"):
        if "=" in part:
            k, v = part.split("=", 1)
            tags[k.strip()] = "".join(v.split())
    return tags
