"""The per-transaction state the protocol and the handler hooks share: typed envelope parts."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Protocol

from aiosmtpd.smtp import Envelope

from app.maildir_stream import SpooledBody
from app.scanning.decision import ScanPolicy
from app.services.relay import RelayInfo
from app.services.resolution import Resolution, Target


@dataclass(frozen=True, slots=True)
class CopyRules:
    """The policy of one stored copy's domain, and whether the sender is on its allow list
    (smtp_ingress/scanning.py fills it at RCPT; here so the envelope imports no scanning)."""

    policy: ScanPolicy
    allowed: bool = False


class ServerLike(Protocol):
    """What the hooks need from the protocol object (``IngressSMTP``)."""

    hostname: str

    def note_junk(self) -> None: ...

    def note_noop(self) -> None: ...

    def transaction_done(self) -> None: ...


@dataclass
class Transaction:
    """Per-transaction state kept on the aiosmtpd envelope (reset by MAIL / RSET / DATA)."""

    queue_id: str = field(default_factory=lambda: secrets.token_hex(6).upper())
    sender: str = ""  # "" is the null reverse-path <>
    # copy key -> (target, the RCPT address that led to it, for the Received "for" clause).
    # The key is the mailbox id (copies to one mailbox are merged), or for a catch-all
    # (multidrop) target the mailbox id and the lower-cased RCPT: one copy per recipient.
    targets: dict[int | tuple[int, str], tuple[Target, str]] = field(default_factory=dict)
    accepted: list[str] = field(default_factory=list)
    # Accepted recipients at relay domains (address, the domain's settings): queued, not
    # stored in a Maildir (smtp_ingress/relay.py).
    relay: list[tuple[str, RelayInfo]] = field(default_factory=list)
    # Accepted bounces to our SRS addresses: (the RCPT, the original sender it decodes to);
    # queued for the original sender, never mixed with other recipients (srs_bounce.py).
    srs: list[tuple[str, str]] = field(default_factory=list)
    # Resolutions are cached per transaction: the same RCPT twice asks the database once.
    cache: dict[str, Resolution] = field(default_factory=dict)
    # Mailbox id -> its domain's scan rules and whether the sender is on that domain's allow
    # list (smtp_ingress/scanning.py, filled at RCPT whether or not scanning is on).
    scan_rules: dict[int, CopyRules] = field(default_factory=dict)
    # The same for the relay recipients, by lower-cased address.
    relay_rules: dict[str, CopyRules] = field(default_factory=dict)


class IngressEnvelope(Envelope):
    """aiosmtpd's envelope with our transaction. The decoded message is ``body`` (streamed,
    maybe spilled to disk) while ``handle_DATA`` runs; aiosmtpd's ``content`` stays unused."""

    def __init__(self) -> None:
        super().__init__()
        self.txn: Transaction | None = None
        self.body: SpooledBody | None = None
