"""The one readiness line every service prints once it listens, and its parser.

Format: ``ready <service> pid=<pid> <listener>=<host>:<port> ...``, for example
``ready smtp pid=4242 smtp=127.0.0.1:2525`` or
``ready serve pid=4242 smtp=127.0.0.1:2525 pop3=127.0.0.1:1110 web=127.0.0.1:8000``.
An IPv6 host is written in brackets (``[::1]:2525``, as in a URL, RFC 3986 section 3.2.2), so
the port is always what follows the last colon. Supervisors, tests and benchmarks wait for this
line; nothing else in the output starts with ``ready ``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

_FIELD = re.compile(r"^(?P<name>[a-z0-9_]+)=(?P<value>\S+)$")
_ADDRESS = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d+)$")


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ready_line(service: str, pid: int, listeners: Iterable[tuple[str, str, int]]) -> str:
    """``ready <service> pid=<pid> <name>=<host>:<port> ...`` for ``(name, host, port)``."""
    parts = ["ready", service, f"pid={pid}"]
    parts += [f"{name}={format_address(host, port)}" for name, host, port in listeners]
    return " ".join(parts)


@dataclass(frozen=True)
class Ready:
    """A parsed readiness line."""

    service: str
    pid: int
    listeners: dict[str, tuple[str, int]] = field(default_factory=dict)

    def port(self, name: str) -> int:
        return self.listeners[name][1]


def parse_ready_line(line: str) -> Ready | None:
    """The parsed line, or None when ``line`` is not a (well-formed) readiness line."""
    words = line.split()
    if len(words) < 3 or words[0] != "ready":
        return None
    service, pid_field, *rest = words[1:]
    if not pid_field.startswith("pid=") or not pid_field[4:].isdigit():
        return None
    listeners: dict[str, tuple[str, int]] = {}
    for word in rest:
        match = _FIELD.match(word)
        address = _ADDRESS.match(match["value"]) if match else None
        if match is None or address is None:
            return None
        host = address["v6"] or address["host"]
        listeners[match["name"]] = (host, int(address["port"]))
    return Ready(service=service, pid=int(pid_field[4:]), listeners=listeners)
