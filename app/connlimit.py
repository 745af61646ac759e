"""Open-connection counts per server process: in total and per client address."""

from __future__ import annotations

from collections import Counter

TOTAL, PER_ADDRESS = "total", "per address"


class ConnectionCounter:
    """``acquire`` when a connection opens (None, or which limit refuses it), ``release``
    when an acquired one closes. Per process: with N workers sharing a port (SO_REUSEPORT)
    a client may hold up to N times the limit, as with the MX's tracker."""

    def __init__(self, *, max_total: int, max_per_address: int) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.per_address: Counter[str] = Counter()
        self.total = 0

    def acquire(self, address: str) -> str | None:
        if self.total >= self.max_total:
            return TOTAL
        if self.per_address[address] >= self.max_per_address:
            return PER_ADDRESS
        self.total += 1
        self.per_address[address] += 1
        return None

    def release(self, address: str) -> None:
        self.total -= 1
        self.per_address[address] -= 1
        if self.per_address[address] <= 0:
            del self.per_address[address]
