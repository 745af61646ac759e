"""Which addresses an authenticated mailbox may send as (envelope sender and header From).

An address is the mailbox's own when it delivers to that mailbox: its own address, an alias
whose targets include it, its address in an alias domain (``resolve_recipient`` follows all
three). Interim: issue 11's sending service (``app.services.sending.may_send_as``, branch
``sendlimit``) replaces this module when it lands; the rule is the same.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.services.resolution import Verdict, resolve_recipient


def routing_trick(address: str) -> bool:
    """Source-routing and quoting hacks (``a%b@c``, ``a!b@c``, ``"a@b"@c``, ``@a:b@c``,
    literals): never a hosted address, never relayed from submission either."""
    local, _, domain = address.rpartition("@")
    return (
        not local
        or not domain
        or any(ch in local for ch in '%!"@:\\ ')
        or domain.startswith("[")
        or any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in address)
    )


def may_send_as(session: Session, *, mailbox_id: int, address: str) -> bool:
    """Whether ``address`` delivers to mailbox ``mailbox_id`` (so its owner may use it)."""
    if routing_trick(address):
        return False
    resolution = resolve_recipient(session, address=address)
    if resolution.verdict is not Verdict.OK:
        return False
    return any(target.mailbox_id == mailbox_id for target in resolution.targets)
