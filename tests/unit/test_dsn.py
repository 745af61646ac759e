"""DSNs (RFC 3464) read back with the stdlib parser: structure and every field."""

from __future__ import annotations

import datetime as dt
import email
import email.policy

import pytest

from app.dsn import DsnRecipient, build_dsn

NOW = dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.UTC)
ARRIVAL = NOW - dt.timedelta(hours=5)


def _parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def _build(*recipients: DsnRecipient) -> email.message.EmailMessage:
    return _parse(
        build_dsn(
            reporting_mta="mx.test.example",
            to="alice@hosted.example",
            queue_id="ABCDEF0123456789",
            arrival=ARRIVAL,
            recipients=recipients,
            now=NOW,
            original_headers=b"From: alice@hosted.example\r\nSubject: Gr\xc3\xbc\xc3\x9fe\r\n\r\n",
        )
    )


def test_failure_report_for_two_recipients() -> None:
    dsn = _build(
        DsnRecipient(
            "bob@remote.example",
            "failed",
            "5.1.1",
            "550 5.1.1 no such user",
            "mx.remote.example",
            NOW,
        ),
        DsnRecipient("carol@other.example", "failed", "5.1.10", None, None, NOW),
    )
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    assert dsn["From"] == "Mail Delivery System <MAILER-DAEMON@mx.test.example>"
    assert dsn["To"] == "alice@hosted.example"
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    human, status, headers = dsn.iter_parts()
    assert "<bob@remote.example> (host mx.remote.example): 550 5.1.1 no such user" in (
        human.get_content()
    )
    per_message, bob, carol = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mx.test.example"
    assert per_message["X-Mailhost-Queue-ID"] == "ABCDEF0123456789"
    assert email.utils.parsedate_to_datetime(per_message["Arrival-Date"]) == ARRIVAL
    assert dict(bob.items()) == {
        "Final-Recipient": "rfc822; bob@remote.example",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx.remote.example",
        "Diagnostic-Code": "smtp; 550 5.1.1 no such user",
        "Last-Attempt-Date": email.utils.format_datetime(NOW),
    }
    assert (carol["Status"], carol["Remote-MTA"], carol["Diagnostic-Code"]) == (
        "5.1.10",
        None,
        None,
    )
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Subject: Grüße" in headers.get_content()


def test_delay_warning_says_until_when_it_is_retried() -> None:
    until = NOW + dt.timedelta(days=4)
    dsn = _build(
        DsnRecipient(
            "bob@remote.example",
            "delayed",
            "4.4.1",
            "421 4.4.1 connection refused",
            "mx.remote.example",
            NOW,
            will_retry_until=until,
        ),
    )
    assert dsn["Subject"] == "Delayed Mail (still being retried)"
    [_, block] = list(dsn.iter_parts())[1].get_payload()
    assert block["Action"] == "delayed"
    assert email.utils.parsedate_to_datetime(block["Will-Retry-Until"]) == until


def test_a_dsn_needs_a_recipient() -> None:
    with pytest.raises(ValueError):
        _build()
