"""Address forms the submission edge refuses before asking anything (routing hacks)."""

from __future__ import annotations


def routing_trick(address: str) -> bool:
    """Source-routing and quoting hacks (``a%b@c``, ``a!b@c``, ``"a@b"@c``, literals):
    never relayed from submission, even for an authenticated user."""
    local, _, domain = address.rpartition("@")
    return (
        not local
        or not domain
        or any(ch in local for ch in '%!"@:\\ ')
        or domain.startswith("[")
        or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in address)
    )
