"""A real DNS server for the tests: dnslib on 127.0.0.1, UDP and TCP on one port picked by the OS.

Tests fill a zone (MX, A, AAAA, TXT, null MX) and point dnspython at ``(host, port)``; a name the
zone does not know is NXDOMAIN, a known name without the asked type is NOERROR with no answer
(NODATA), so the code under test sees the same answers as from a real authoritative server.
"""

from __future__ import annotations

import socket
import threading
from collections import defaultdict
from typing import Any

from dnslib import AAAA, MX, QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

# RFC 1035 section 3.3.14: a TXT character-string holds at most 255 octets; longer records (DKIM
# RSA-2048 keys) are split into several strings, which a reader joins.
_TXT_CHUNK = 255


def _norm(name: str) -> str:
    return name.rstrip(".").lower() + "."


class Zone(BaseResolver):  # type: ignore[misc]
    """The records served; safe to change while the server runs (one lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[str, list[RR]] = defaultdict(list)
        self.queries: list[tuple[str, str]] = []

    def _add(self, name: str, rtype: str, rdata: Any, ttl: int = 60) -> None:
        with self._lock:
            self._records[_norm(name)].append(
                RR(_norm(name), getattr(QTYPE, rtype), rdata=rdata, ttl=ttl)
            )

    def mx(self, domain: str, *hosts: tuple[int, str]) -> None:
        """MX records: (preference, exchange host) pairs."""
        for preference, host in hosts:
            self._add(domain, "MX", MX(_norm(host), preference))

    def null_mx(self, domain: str) -> None:
        """RFC 7505: a single MX of preference 0 and exchange "." says the domain takes no mail."""
        self._add(domain, "MX", MX(".", 0))

    def a(self, host: str, *addresses: str) -> None:
        for address in addresses:
            self._add(host, "A", A(address))

    def aaaa(self, host: str, *addresses: str) -> None:
        for address in addresses:
            self._add(host, "AAAA", AAAA(address))

    def txt(self, name: str, text: str) -> None:
        data = text.encode()
        chunks = [data[i : i + _TXT_CHUNK] for i in range(0, len(data), _TXT_CHUNK)] or [b""]
        self._add(name, "TXT", TXT(chunks))

    def exists(self, name: str) -> None:
        """Make a name exist with no records (answers NODATA rather than NXDOMAIN)."""
        with self._lock:
            self._records.setdefault(_norm(name), [])

    def clear(self, name: str) -> None:
        with self._lock:
            self._records.pop(_norm(name), None)

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        qname = str(request.q.qname).lower()
        qtype = QTYPE[request.q.qtype]
        with self._lock:
            self.queries.append((qname, qtype))
            known = qname in self._records
            answers = [
                rr
                for rr in self._records.get(qname, [])
                if request.q.qtype in (rr.rtype, QTYPE.ANY)
            ]
        if not known:
            reply.header.rcode = RCODE.NXDOMAIN
        for rr in answers:
            reply.add_answer(rr)
        return reply


class _QuietLogger(DNSLogger):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(log="-request,-reply,-truncated,-error", prefix=False)


class TestDNSServer:
    """UDP and TCP (dnspython falls back to TCP for truncated answers) on one loopback port."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.zone = Zone()
        self.host = host
        for _attempt in range(20):
            udp = DNSServer(self.zone, address=host, port=0, logger=_QuietLogger())
            self.port = int(udp.server.server_address[1])
            try:
                tcp = DNSServer(
                    self.zone, address=host, port=self.port, tcp=True, logger=_QuietLogger()
                )
            except OSError:
                udp.server.server_close()
                continue
            self._servers = (udp, tcp)
            break
        else:  # pragma: no cover - the OS kept handing out a port taken for TCP
            raise RuntimeError("could not bind UDP and TCP on one port")

    def start(self) -> TestDNSServer:
        for server in self._servers:
            server.start_thread()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.stop()
            server.server.server_close()

    def query(self, name: str, rtype: str = "A") -> DNSRecord:
        """Ask the server over UDP (for checking the fixture itself)."""
        packet = DNSRecord.question(name, rtype).pack()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            sock.sendto(packet, (self.host, self.port))
            data, _ = sock.recvfrom(65535)
        return DNSRecord.parse(data)
