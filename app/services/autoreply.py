"""RFC 3834 auto-replies: whether a message gets one, the reply itself, who was answered.

The rules (RFC 3834 section 2 and 3; the README's "Mailbox users" repeats them):

* only mail addressed directly to the user: one of the user's addresses (the mailbox, the
  address the message was sent to, an alias that points at the mailbox) in ``To:`` or
  ``Cc:``; a ``Bcc`` or a list expansion is not "directly" (section 2, "personal" responders);
* never to the null sender ``<>`` (bounces, including our own DSNs, and other auto-replies),
  to ``MAILER-DAEMON``, ``owner-*`` or ``*-request`` senders (section 2), to a message that
  carries a ``List-*`` field (RFC 2369/2919), ``Precedence: bulk|list|junk``, an
  ``Auto-Submitted`` field other than ``no`` (section 5), or a delivery report
  (``multipart/report``), nor to the user's own address;
* at most once per sender per ``interval`` (``Settings.autoreply_interval_days``), kept in
  ``auto_reply_sent``;
* the reply goes to the envelope sender (section 4: the Return-Path), from the null sender
  ``<>`` (section 3.3: replies to it cannot start a loop) with the user in ``From:``, carries
  ``Auto-Submitted: auto-replied`` (section 5.1), ``In-Reply-To``/``References`` (3.1.3/4).
"""

from __future__ import annotations

import datetime as dt
import email.policy
import email.utils
from collections.abc import Collection
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.models import AutoReply, AutoReplySent

_PARSER = BytesHeaderParser(policy=email.policy.compat32)
_BULK_PRECEDENCE = frozenset({"bulk", "list", "junk"})


@dataclass(frozen=True, slots=True)
class ReplyRule:
    """A mailbox's auto-reply as delivery needs it (plain data, no ORM object)."""

    mailbox_id: int
    address: str  # the mailbox's own address: the reply's From
    subject: str
    body: str
    starts_on: dt.date | None
    ends_on: dt.date | None

    def active_on(self, day: dt.date) -> bool:
        return (self.starts_on is None or self.starts_on <= day) and (
            self.ends_on is None or day <= self.ends_on
        )


def parse_headers(head: bytes) -> Message:
    """The header section of a message (anything after the first empty line is ignored)."""
    return _PARSER.parsebytes(head)


def _addresses_in(headers: Message, *names: str) -> set[str]:
    values: list[str] = []
    for name in names:
        values.extend(str(v) for v in headers.get_all(name, []))
    return {addr.strip().lower() for _, addr in email.utils.getaddresses(values) if addr}


def refusal(
    *, sender: str, headers: Message, addresses: Collection[str], own_address: str
) -> str | None:
    """Why this message gets no auto-reply (RFC 3834), or None when it may get one.

    ``addresses``: every address of the user (mailbox, the RCPT address, aliases to it)."""
    if not sender:
        return "null sender"
    local = sender.rpartition("@")[0].lower()
    if local == "mailer-daemon" or local.startswith("owner-") or local.endswith("-request"):
        return "list or daemon sender"
    if sender.lower() == own_address.lower():
        return "sent by the user"
    auto = str(headers.get("Auto-Submitted", "")).split(";")[0].strip().lower()
    if auto and auto != "no":
        return "auto-submitted"
    if any(name.lower().startswith("list-") for name in headers):
        return "mailing list"
    if str(headers.get("Precedence", "")).strip().lower() in _BULK_PRECEDENCE:
        return "bulk precedence"
    if str(headers.get("Content-Type", "")).strip().lower().startswith("multipart/report"):
        return "delivery report"
    mine = {a.lower() for a in addresses}
    if not mine & _addresses_in(headers, "To", "Cc"):
        return "not addressed directly"
    return None


def claim_reply(
    session: Session, *, mailbox_id: int, sender: str, now: dt.datetime, interval: dt.timedelta
) -> bool:
    """Note that ``sender`` is answered now, unless it was within ``interval``: True when the
    caller must send the reply. Concurrent deliveries race on the primary key; the loser
    (IntegrityError in its savepoint) sends nothing."""
    key = sender.lower()
    row = session.get(AutoReplySent, (mailbox_id, key), with_for_update=True)
    if row is not None:
        if row.sent_at > now - interval:
            return False
        row.sent_at = now
        session.flush()
        return True
    try:
        with session.begin_nested():
            session.add(AutoReplySent(mailbox_id=mailbox_id, sender=key, sent_at=now))
    except IntegrityError:
        return False
    return True


def build_reply(
    rule: ReplyRule, *, to: str, headers: Message, now: dt.datetime, hostname: str
) -> bytes:
    """The auto-reply message (CRLF line endings, ready for the spool)."""
    reply = EmailMessage(policy=email.policy.SMTP)
    reply["From"] = rule.address
    reply["To"] = to
    reply["Subject"] = rule.subject
    reply["Date"] = email.utils.format_datetime(now)
    reply["Message-ID"] = email.utils.make_msgid(domain=rule.address.rpartition("@")[2])
    original_id = str(headers.get("Message-ID", "")).strip()
    if original_id:
        reply["In-Reply-To"] = original_id
        references = str(headers.get("References", "")).split()
        reply["References"] = " ".join([*references, original_id][-10:])
    reply["Auto-Submitted"] = "auto-replied"
    reply["X-Mailer"] = f"Mailhost auto-reply ({hostname})"
    reply.set_content(rule.body)
    return reply.as_bytes(policy=email.policy.SMTP)


def rules_for(session: Session, *, mailbox_ids: Collection[int]) -> dict[int, AutoReply]:
    """The enabled auto-replies of these mailboxes (one query)."""
    if not mailbox_ids:
        return {}
    rows = session.scalars(
        select(AutoReply).where(AutoReply.mailbox_id.in_(sorted(mailbox_ids)), AutoReply.enabled)
    )
    return {row.mailbox_id: row for row in rows}
