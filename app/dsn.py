"""Delivery status notifications (RFC 3464) built with the stdlib ``email`` package: pure."""

from __future__ import annotations

import datetime as dt
import email.policy
import email.utils
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText


@dataclass(frozen=True, slots=True)
class DsnRecipient:
    """One recipient block: ``action`` is 'failed' or 'delayed' (RFC 3464 section 2.3.3)."""

    address: str
    action: str
    status: str  # RFC 3463, e.g. 5.1.1
    diagnostic: str | None  # the remote reply, "550 5.1.1 no such user"
    remote_mta: str | None
    last_attempt: dt.datetime
    will_retry_until: dt.datetime | None = None


def _block(fields: Sequence[tuple[str, str]]) -> Message:
    block = Message()
    for name, value in fields:
        block[name] = value
    return block


def _one_line(text: str) -> str:
    return " ".join(text.split())


def build_dsn(
    *,
    reporting_mta: str,
    to: str,
    queue_id: str,
    arrival: dt.datetime,
    recipients: Sequence[DsnRecipient],
    original_headers: bytes,
    now: dt.datetime,
) -> bytes:
    """A multipart/report; report-type=delivery-status to ``to`` (the original envelope
    sender), from MAILER-DAEMON: a human-readable part, the machine-readable status (one
    block per recipient) and the original headers (text/rfc822-headers, RFC 6522)."""
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    failed = [r for r in recipients if r.action == "failed"]
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"
    report["To"] = to
    report["Subject"] = (
        "Undelivered Mail Returned to Sender" if failed else "Delayed Mail (still being retried)"
    )
    report["Date"] = email.utils.format_datetime(now)
    report["Message-ID"] = email.utils.make_msgid(f"dsn.{queue_id}", domain=reporting_mta)
    # RFC 3834 section 5: keeps vacation responders and other robots from answering it.
    report["Auto-Submitted"] = "auto-replied"

    lines = [f"This is the mail system at host {reporting_mta}.", ""]
    if failed:
        lines += [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients.",
            "",
        ]
    else:
        lines += [
            "Your message could not be delivered yet to the recipients below.",
            "The mail system will keep trying; you do not need to send it again.",
            "",
        ]
    for r in recipients:
        detail = _one_line(r.diagnostic) if r.diagnostic else r.status
        host = f" (host {r.remote_mta})" if r.remote_mta else ""
        lines.append(f"<{r.address}>{host}: {detail}")
    text = "\n".join(lines) + "\n"
    human = MIMEText(text, "plain", "us-ascii" if text.isascii() else "utf-8")
    human["Content-Description"] = "Notification"
    report.attach(human)

    status = MIMEBase("message", "delivery-status")
    del status["MIME-Version"]
    blocks = [
        _block(
            [
                ("Reporting-MTA", f"dns; {reporting_mta}"),
                ("X-Mailhost-Queue-ID", queue_id),
                ("Arrival-Date", email.utils.format_datetime(arrival)),
            ]
        )
    ]
    for r in recipients:
        fields = [
            ("Final-Recipient", f"rfc822; {r.address}"),
            ("Action", r.action),
            ("Status", r.status),
        ]
        if r.remote_mta:
            fields.append(("Remote-MTA", f"dns; {r.remote_mta}"))
        if r.diagnostic:
            fields.append(("Diagnostic-Code", f"smtp; {_one_line(r.diagnostic)}"))
        fields.append(("Last-Attempt-Date", email.utils.format_datetime(r.last_attempt)))
        if r.will_retry_until is not None:
            fields.append(("Will-Retry-Until", email.utils.format_datetime(r.will_retry_until)))
        blocks.append(_block(fields))
    status.set_payload(blocks)  # type: ignore[arg-type]
    status["Content-Description"] = "Delivery report"
    report.attach(status)

    headers = EmailMessage()
    headers.set_content(
        original_headers.decode("utf-8", "replace"), subtype="rfc822-headers", cte="8bit"
    )
    del headers["MIME-Version"]
    headers["Content-Description"] = "Undelivered Message Headers"
    report.attach(headers)
    return report.as_bytes(policy=email.policy.SMTP)
