"""Submission reply table: every AUTH / TLS / sender-policy / relay rule with its exact reply,
against a real server on port 0 with smtplib over real TLS."""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Callable
from pathlib import Path

import pytest

from app.maildir import MaildirStore
from tests.protocol.smtp_helpers import ADDRESSES, new_messages
from tests.protocol.submission_helpers import (
    PASSWORD,
    TIMEOUT,
    SubmissionThread,
    implicit_client,
    message,
    starttls_client,
)

USER = ADDRESSES["user"]


def _plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def _client(stage: str, server: SubmissionThread, cert: Path) -> smtplib.SMTP:
    if stage == "plain":
        client = smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT)
        client.ehlo("client.test")
        return client
    if stage == "tls":
        return starttls_client(server.port, cert)
    if stage == "auth":
        return starttls_client(server.port, cert, login=USER)
    if stage == "implicit":
        return implicit_client(server.tls_port, cert)
    raise AssertionError(stage)


# (stage, commands before the checked one, checked command, exact reply)
TABLE: list[tuple[str, list[str], str, str]] = [
    # --- TLS first (RFC 3207) and AUTH needs encryption (RFC 4954 section 6)
    ("plain", [], f"AUTH PLAIN {_plain(USER, PASSWORD)}",
     "538 5.7.11 Encryption required for requested authentication mechanism"),
    ("plain", [], "AUTH LOGIN",
     "538 5.7.11 Encryption required for requested authentication mechanism"),
    ("plain", [], f"MAIL FROM:<{USER}>", "530 5.7.0 Must issue a STARTTLS command first"),
    ("plain", [], "RCPT TO:<bob@remote.example>", "530 5.7.0 Must issue a STARTTLS command first"),
    ("plain", [], "DATA", "530 5.7.0 Must issue a STARTTLS command first"),
    # --- nothing without AUTH (open relay attempts)
    ("tls", [], f"MAIL FROM:<{USER}>", "530 5.7.0 Authentication required"),
    ("tls", [], "MAIL FROM:<stranger@remote.example>", "530 5.7.0 Authentication required"),
    ("tls", [], "MAIL FROM:<>", "530 5.7.0 Authentication required"),
    ("implicit", [], f"MAIL FROM:<{USER}>", "530 5.7.0 Authentication required"),
    ("tls", [], "RCPT TO:<bob@remote.example>", "530 5.7.0 Authentication required"),
    # --- credentials (535 5.7.8 alike for a wrong password and an unknown user)
    ("tls", [], f"AUTH PLAIN {_plain(USER, 'wrong')}",
     "535 5.7.8 Authentication credentials invalid"),
    ("tls", [], f"AUTH PLAIN {_plain('nobody@hosted.example', PASSWORD)}",
     "535 5.7.8 Authentication credentials invalid"),
    ("tls", [], f"AUTH PLAIN {_plain(ADDRESSES['suspended'], PASSWORD)}",
     "535 5.7.8 Authentication credentials invalid"),
    ("tls", [], f"AUTH PLAIN {_plain(USER, PASSWORD)}", "235 2.7.0 Authentication successful"),
    ("implicit", [], f"AUTH PLAIN {_plain(USER, PASSWORD)}", "235 2.7.0 Authentication successful"),
    ("tls", [], "AUTH CRAM-MD5", "504 5.5.4 Unrecognized authentication type"),
    ("tls", [], "AUTH PLAIN !!!notbase64", "501 5.5.2 Cannot decode base64"),
    ("auth", [], f"AUTH PLAIN {_plain(USER, PASSWORD)}", "503 5.5.1 Already authenticated"),
    # --- sender policy: the envelope sender must deliver to the authenticated mailbox
    ("auth", [], f"MAIL FROM:<{USER}>", "250 2.1.0 Sender ok"),
    ("auth", [], "MAIL FROM:<USER@HOSTED.EXAMPLE>", "250 2.1.0 Sender ok"),
    ("auth", [], "MAIL FROM:<team@hosted.example>", "250 2.1.0 Sender ok"),  # alias -> user
    ("auth", [], "MAIL FROM:<user@alias.example>", "250 2.1.0 Sender ok"),  # alias domain
    ("auth", [], f"MAIL FROM:<{ADDRESSES['other']}>",
     "553 5.7.1 Sender address rejected: not owned by the authenticated user"),
    ("auth", [], "MAIL FROM:<stranger@remote.example>",
     "553 5.7.1 Sender address rejected: not owned by the authenticated user"),
    ("auth", [], "MAIL FROM:<nobody@hosted.example>",
     "553 5.7.1 Sender address rejected: not owned by the authenticated user"),
    # A quoted local part is the same address unquoted (RFC 5321 4.1.2): "other" is not ours.
    ("auth", [], 'MAIL FROM:<"other"@hosted.example>',
     "553 5.7.1 Sender address rejected: not owned by the authenticated user"),
    ("auth", [], "MAIL FROM:<user%hosted.example@remote.example>",
     "553 5.7.1 Sender address rejected: not owned by the authenticated user"),
    ("auth", [], "MAIL FROM:<>",
     "553 5.7.1 Sender address rejected: the null sender <> is not accepted on submission"),
    # --- recipients
    ("auth", [f"MAIL FROM:<{USER}>"], "RCPT TO:<bob@remote.example>", "250 2.1.5 Recipient ok"),
    ("auth", [f"MAIL FROM:<{USER}>"], f"RCPT TO:<{ADDRESSES['other']}>", "250 2.1.5 Recipient ok"),
    ("auth", [f"MAIL FROM:<{USER}>"], "RCPT TO:<nobody@hosted.example>",
     "550 5.1.1 Recipient address rejected: user unknown"),
    ("auth", [f"MAIL FROM:<{USER}>"], f"RCPT TO:<{ADDRESSES['suspended']}>",
     "550 5.2.1 Recipient mailbox disabled"),
    ("auth", [f"MAIL FROM:<{USER}>"], f"RCPT TO:<{ADDRESSES['full']}>",
     "452 4.2.2 Mailbox full, try again later"),
    ("auth", [f"MAIL FROM:<{USER}>"], "RCPT TO:<bob%other.example@remote.example>",
     "553 5.7.1 Recipient address rejected: routing characters are not accepted"),
    ("auth", [f"MAIL FROM:<{USER}>"], "RCPT TO:<other.example!bob@remote.example>",
     "553 5.7.1 Recipient address rejected: routing characters are not accepted"),
    ("auth", [f"MAIL FROM:<{USER}>"], 'RCPT TO:<"bob@other.example"@remote.example>',
     "553 5.7.1 Recipient address rejected: routing characters are not accepted"),
    ("auth", [f"MAIL FROM:<{USER}>"], "RCPT TO:<bob@[192.0.2.1]>",
     "553 5.7.1 Recipient address rejected: routing characters are not accepted"),
    ("auth", [f"MAIL FROM:<{USER}>"], "RCPT TO:<>", "553 5.1.3 Bad recipient address syntax"),
    ("auth", [], "RCPT TO:<bob@remote.example>", "503 5.5.1 Error: need MAIL command"),
    ("auth", [f"MAIL FROM:<{USER}>"], "DATA", "503 5.5.1 Error: need RCPT command"),
    ("auth", [], "EXPN team", "502 5.5.1 EXPN not available"),
]  # fmt: skip


@pytest.mark.parametrize(("stage", "before", "command", "expected"), TABLE)
def test_reply_table(
    submission: SubmissionThread,
    tls_files: tuple[Path, Path],
    stage: str,
    before: list[str],
    command: str,
    expected: str,
) -> None:
    client = _client(stage, submission, tls_files[0])
    try:
        for line in before:
            code, text = client.docmd(line)
            assert code == 250, (line, code, text)
        code, text = client.docmd(command)
        assert f"{code} {text.decode()}" == expected
    finally:
        client.close()


def test_ehlo_offers_auth_only_after_tls(
    submission: SubmissionThread, tls_files: tuple[Path, Path]
) -> None:
    plain = smtplib.SMTP("127.0.0.1", submission.port, timeout=TIMEOUT)
    plain.ehlo("client.test")
    assert plain.has_extn("starttls") and not plain.has_extn("auth")
    plain.close()
    tls = starttls_client(submission.port, tls_files[0])
    assert tls.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
    assert not tls.has_extn("starttls")
    tls.close()
    implicit = implicit_client(submission.tls_port, tls_files[0])
    assert implicit.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
    implicit.close()


def test_auth_login_dialogue(submission: SubmissionThread, tls_files: tuple[Path, Path]) -> None:
    client = starttls_client(submission.port, tls_files[0])
    code, text = client.docmd("AUTH LOGIN")
    assert (code, base64.b64decode(text)) == (334, b"Username:")
    code, text = client.docmd(base64.b64encode(USER.encode()).decode())
    assert (code, base64.b64decode(text)) == (334, b"Password:")
    code, text = client.docmd(base64.b64encode(PASSWORD.encode()).decode())
    assert (code, text) == (235, b"2.7.0 Authentication successful")
    client.close()


def test_throttle_shared_with_pop3_answers_454(
    smtp_world: None,
    submission_start: Callable[..., SubmissionThread],
    tls_files: tuple[Path, Path],
) -> None:
    server = submission_start(login_address_budget=2)
    client = starttls_client(server.port, tls_files[0])
    for _ in range(2):
        assert client.docmd(f"AUTH PLAIN {_plain(USER, 'wrong')}")[0] == 535
    # Over budget: refused at once, even with the right password.
    code, text = client.docmd(f"AUTH PLAIN {_plain(USER, PASSWORD)}")
    assert f"{code} {text.decode()}" == "454 4.7.0 Too many failed logins, try again later"
    client.close()


def test_foreign_header_from_refused(
    submission: SubmissionThread, tls_files: tuple[Path, Path], store: MaildirStore
) -> None:
    client = starttls_client(submission.port, tls_files[0], login=USER)
    cases = [
        (message(ADDRESSES["other"], ADDRESSES["other"]),
         "550 5.7.1 Message refused: From header address not owned by the authenticated user"),
        (message("ceo@bank.example", ADDRESSES["other"]),
         "550 5.7.1 Message refused: From header address not owned by the authenticated user"),
        (b"From: <user@hosted.example>, <other@hosted.example>\r\n\r\nboth\r\n",
         "550 5.7.1 Message refused: From header address not owned by the authenticated user"),
        (b"Subject: no from\r\n\r\nbody\r\n",
         "550 5.6.0 Message refused: no From header field (RFC 5322 section 3.6)"),
    ]  # fmt: skip
    for data, expected in cases:
        assert client.docmd(f"MAIL FROM:<{USER}>")[0] == 250
        assert client.docmd(f"RCPT TO:<{ADDRESSES['other']}>")[0] == 250
        assert client.docmd("DATA")[0] == 354
        client.send(data + b".\r\n")
        code, text = client.getreply()
        assert f"{code} {text.decode()}" == expected
    client.close()
    assert new_messages(store, ADDRESSES["other"]) == []
