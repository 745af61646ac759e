"""Submission delivery: hosted recipients straight into their Maildirs, remote ones through the
queue to a real aiosmtpd sink on 127.0.0.x found through the real test DNS server; trace
headers; DKIM verified by dkimpy; the sending rules (may_send, limits) with their replies."""

from __future__ import annotations

import email
import email.policy
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app import dkim
from app.config import Settings
from app.db import transaction
from app.maildir import MaildirStore
from app.models import Mailbox, OutboundMessage, utcnow
from app.services import dkim as dkim_service
from app.services import domains
from app.services.audit import CLI_ACTOR
from tests.dkim_helpers import verify
from tests.dnsserver import TestDNSServer
from tests.protocol.outbound_helpers import Clock, Sink, free_port, make_agent, run_once
from tests.protocol.smtp_helpers import ADDRESSES, new_messages
from tests.protocol.submission_helpers import SubmissionThread, message, starttls_client

USER, OTHER = ADDRESSES["user"], ADDRESSES["other"]


@pytest.fixture
def sink_port() -> int:
    return free_port()


@pytest.fixture
def sink(sink_port: int) -> Iterator[Sink]:
    running = Sink("127.0.0.2", sink_port).start()
    yield running
    running.stop()


@pytest.fixture
def remote_settings(
    submission_settings: Settings, dns_server: TestDNSServer, sink_port: int
) -> Settings:
    dns_server.zone.mx("remote.example", (10, "mx.remote.example"))
    dns_server.zone.a("mx.remote.example", "127.0.0.2")
    return submission_settings.model_copy(
        update={
            "delivery_port": sink_port,
            "delivery_nameservers": ("127.0.0.1",),
            "delivery_dns_port": dns_server.port,
            "delivery_dns_timeout": 5.0,
            "delivery_connect_timeout": 5.0,
        }
    )


def _send(server: SubmissionThread, cert: Path, rcpts: list[str], data: bytes) -> str:
    client = starttls_client(server.port, cert, login=USER)
    try:
        refused = client.sendmail(USER, rcpts, data)
        assert refused == {}
        return "ok"
    finally:
        client.quit()


def test_local_and_remote_delivery(
    smtp_world: None,
    submission_start: Callable[..., SubmissionThread],
    remote_settings: Settings,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    tls_files: tuple[Path, Path],
    sink: Sink,
) -> None:
    server = submission_start()
    data = message(USER, OTHER, subject="both ways")
    _send(server, tls_files[0], [OTHER, "bob@remote.example"], data)
    # Hosted: stored at once, before the 250.
    [copy] = new_messages(store, OTHER)
    parsed = email.message_from_bytes(copy, policy=email.policy.default)
    assert parsed["Return-Path"] == f"<{USER}>"
    assert parsed["Delivered-To"] == OTHER
    received = str(parsed["Received"])
    assert "with ESMTPSA" in received and f"authenticated sender: {USER}" in received
    assert "[127.0.0.1]" in received and "correct horse" not in copy.decode()
    assert parsed["Message-ID"] and parsed["Date"]  # added: the client sent neither
    assert parsed["Subject"] == "both ways" and parsed["From"] == f"Sender <{USER}>"
    # Remote: one queue row, origin submission, the customer recorded.
    with session_factory() as s:
        [queued] = s.scalars(select(OutboundMessage)).all()
        assert (queued.origin, queued.sender) == ("submission", USER)
        assert queued.customer_id is not None
        assert [r.address for r in queued.recipients] == ["bob@remote.example"]
    # The delivery agent takes it to the sink (found by MX through the test DNS server).
    agent = make_agent(remote_settings, session_factory, store, Clock(utcnow()))
    assert run_once(agent) == 1
    [got] = sink.received
    assert got.sender == USER and got.recipients == ["bob@remote.example"]
    assert b"Subject: both ways" in got.data and b"with ESMTPSA" in got.data


def test_header_fields_kept_and_not_duplicated(
    submission: SubmissionThread, tls_files: tuple[Path, Path], store: MaildirStore
) -> None:
    extra = "Message-ID: <mine@client.test>\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n"
    _send(submission, tls_files[0], [OTHER], message(USER, OTHER, extra=extra))
    [copy] = new_messages(store, OTHER)
    parsed = email.message_from_bytes(copy, policy=email.policy.default)
    assert parsed.get_all("Message-ID") == ["<mine@client.test>"]
    assert parsed.get_all("Date") == ["Tue, 01 Dec 2026 10:00:00 +0000"]


def test_dkim_signature_verifies_against_dns(
    smtp_world: None,
    submission_start: Callable[..., SubmissionThread],
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    dns_server: TestDNSServer,
    tls_files: tuple[Path, Path],
) -> None:
    with transaction(session_factory) as s:
        domain = domains.get_domain_by_name(s, name="hosted.example")
        key = dkim_service.generate_key(s, actor=CLI_ACTOR, domain_id=domain.id, selector="s1")
        dns_server.zone.txt(
            dkim.record_name(key.selector, "hosted.example"),
            dkim.record_value(key.algorithm, key.public_key),
        )
    server = submission_start()
    _send(server, tls_files[0], [OTHER], message(USER, OTHER, subject="signed"))
    [copy] = new_messages(store, OTHER)
    # What a remote verifier sees: the message without our local trace fields, CRLF.
    wire = copy.split(b"\n", 2)[2].replace(b"\n", b"\r\n")
    assert wire.startswith(b"DKIM-Signature:")
    assert verify(wire, dns_server)
    assert not verify(wire.replace(b"Hello there.", b"Hello tampered."), dns_server)


def test_may_send_off_and_limits(
    smtp_world: None,
    submission_start: Callable[..., SubmissionThread],
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    tls_files: tuple[Path, Path],
) -> None:
    server = submission_start(send_mailbox_messages_per_hour=2)
    for n in range(2):
        _send(server, tls_files[0], [OTHER], message(USER, OTHER, subject=f"n{n}"))
    client = starttls_client(server.port, tls_files[0], login=USER)
    code, text = client.docmd(f"MAIL FROM:<{USER}>")
    assert code == 450 and text.decode().startswith("4.7.1 "), text
    client.quit()
    assert len(new_messages(store, OTHER)) == 2
    with session_factory() as s:
        mailbox = s.scalars(select(Mailbox).where(Mailbox.local_part == "user")).first()
        assert mailbox is not None and mailbox.sending_limited_until is not None
    # Sending switched off: a session logged in before it is refused at MAIL with the reason,
    # a new login is refused as POP3 refuses a mailbox with POP3 off (535, like a wrong
    # password, so a guesser cannot tell); POP3 off does not stop sending.
    client = starttls_client(server.port, tls_files[0], login=OTHER)
    with transaction(session_factory) as s:
        box = s.scalars(select(Mailbox).where(Mailbox.local_part == "other")).one()
        box.may_send = False
    code, text = client.docmd(f"MAIL FROM:<{OTHER}>")
    assert code == 550 and text.decode().startswith("5.7.1 Sending refused: "), text
    client.quit()
    with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
        starttls_client(server.port, tls_files[0], login=OTHER)
    assert refused.value.smtp_code == 535
    with transaction(session_factory) as s:
        box = s.scalars(select(Mailbox).where(Mailbox.local_part == "other")).one()
        box.may_send, box.pop3_enabled = True, False
    client = starttls_client(server.port, tls_files[0], login=OTHER)
    assert client.sendmail(OTHER, [USER], message(OTHER, USER, subject="pop3 off")) == {}
    client.quit()
    assert any(b"pop3 off" in m for m in new_messages(store, USER))


def test_limit_reached_during_data_keeps_nothing(
    smtp_world: None,
    submission_start: Callable[..., SubmissionThread],
    store: MaildirStore,
    session_factory: sessionmaker[Session],
    tls_files: tuple[Path, Path],
) -> None:
    """Two sessions pass MAIL while one message is left; the second DATA is refused 450 and
    neither its local copy nor its queue row stays."""
    server = submission_start(send_mailbox_messages_per_hour=1)
    first = starttls_client(server.port, tls_files[0], login=USER)
    second = starttls_client(server.port, tls_files[0], login=USER)
    for client in (first, second):
        assert client.docmd(f"MAIL FROM:<{USER}>")[0] == 250
        assert client.docmd(f"RCPT TO:<{OTHER}>")[0] == 250
        assert client.docmd("RCPT TO:<bob@remote.example>")[0] == 250
    replies = []
    for client in (first, second):
        assert client.docmd("DATA")[0] == 354
        client.send(message(USER, OTHER) + b".\r\n")
        replies.append(client.getreply())
        client.quit()
    assert replies[0][0] == 250 and replies[1][0] == 450, replies
    assert len(new_messages(store, OTHER)) == 1
    with session_factory() as s:
        assert len(s.scalars(select(OutboundMessage)).all()) == 1
