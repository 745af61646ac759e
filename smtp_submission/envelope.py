"""Who logged in and what the current transaction holds: the submission handler's data."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiosmtpd.smtp import Envelope

from app.services import sending
from app.services.resolution import Target


@dataclass(frozen=True, slots=True)
class Identity:
    """Who logged in (kept on the aiosmtpd session as ``auth_data``)."""

    mailbox_id: int
    address: str
    customer_id: int


@dataclass
class SubmissionEnvelope(Envelope):
    """aiosmtpd's envelope with the resolved recipients of the transaction."""

    queue_id: str = ""
    local: dict[int, tuple[Target, str]] = field(default_factory=dict)
    remote: list[str] = field(default_factory=list)
    # The limits and counters read at MAIL FROM: each RCPT is checked against them.
    limits: sending.SendingSnapshot | None = None
    stored_keys: list[str] = field(default_factory=list)  # Maildir names, for tracking

    def __post_init__(self) -> None:
        Envelope.__init__(self)
