"""The delivery agent against real DNS (dnslib on loopback) and real aiosmtpd sinks on 127.0.0.x."""

from __future__ import annotations

import email
import email.policy
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.maildir import MailboxRef, MaildirStore
from tests.dnsserver import TestDNSServer
from tests.factories import make_mailbox
from tests.protocol.outbound_helpers import (
    Clock,
    Sink,
    enqueue,
    free_port,
    make_agent,
    outbound_settings,
    rows,
    run_once,
    server_tls,
)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def sinks(port: int) -> Iterator[list[Sink]]:
    started: list[Sink] = []
    yield started
    for sink in started:
        sink.stop()


@pytest.fixture
def out(settings: Settings, tmp_path: Path, dns_server: TestDNSServer, port: int) -> Settings:
    return outbound_settings(settings, tmp_path, dns_server.port, port)


@pytest.fixture
def alice(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as s:
        make_mailbox(s, "alice@hosted.example")
        s.commit()


def _sink(sinks: list[Sink], host: str, port: int, tls: ssl.SSLContext | None = None) -> Sink:
    sink = Sink(host, port, tls=tls).start()
    sinks.append(sink)
    return sink


def _dsn(store: MaildirStore, address: str = "alice@hosted.example") -> email.message.Message:
    local, domain = address.split("@")
    [info] = store.list_messages(MailboxRef(domain, local))
    with store.open_message(info) as f:
        return email.message_from_bytes(f.read(), policy=email.policy.default)


def _status_blocks(dsn: email.message.Message) -> list[email.message.Message]:
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    parts = list(dsn.iter_parts())  # type: ignore[attr-defined]
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    blocks = parts[1].get_payload()
    assert isinstance(blocks, list)
    return blocks


def test_first_mx_down_second_takes_it(
    out: Settings,
    dns_server: TestDNSServer,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    sinks: list[Sink],
    port: int,
) -> None:
    dns_server.zone.mx("remote.example", (10, "mx1.remote.example"), (20, "mx2.remote.example"))
    dns_server.zone.a("mx1.remote.example", "127.0.0.9")  # nothing listens there
    dns_server.zone.a("mx2.remote.example", "127.0.0.3")
    sink = _sink(sinks, "127.0.0.3", port)
    enqueue(out, session_factory, ["bob@remote.example", "carol@remote.example"])
    assert run_once(make_agent(out, session_factory, store, Clock())) == 2
    # One transaction for both recipients of the message.
    [got] = sink.received
    assert (got.sender, got.recipients) == (
        "alice@hosted.example",
        ["bob@remote.example", "carol@remote.example"],
    )
    assert b"Subject: outbound test" in got.data
    assert [(r.state, r.last_reply_code, r.last_reply_host) for _, r in rows(session_factory)] == [
        ("delivered", 250, "mx2.remote.example[127.0.0.3]")
    ] * 2


def test_domain_without_mx_falls_back_to_its_address(
    out: Settings,
    dns_server: TestDNSServer,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    sinks: list[Sink],
    port: int,
) -> None:
    dns_server.zone.a("plain.example", "127.0.0.4")
    sink = _sink(sinks, "127.0.0.4", port)
    enqueue(out, session_factory, ["bob@plain.example"])
    run_once(make_agent(out, session_factory, store, Clock()))
    assert [r.recipients for r in sink.received] == [["bob@plain.example"]]


def test_4xx_is_retried_on_schedule_then_delivered(
    out: Settings,
    dns_server: TestDNSServer,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    sinks: list[Sink],
    port: int,
) -> None:
    dns_server.zone.mx("remote.example", (10, "mx.remote.example"))
    dns_server.zone.a("mx.remote.example", "127.0.0.3")
    sink = _sink(sinks, "127.0.0.3", port)
    sink.handler.rcpt_replies = ["451 4.7.1 greylisted, try again later"]
    clock = Clock()
    agent = make_agent(out, session_factory, store, clock)
    enqueue(out, session_factory, ["bob@remote.example"])
    assert run_once(agent) == 1
    [(_, row)] = rows(session_factory)
    assert (row.state, row.attempts, row.last_reply_code) == ("deferred", 1, 451)
    assert row.last_reply_text == "4.7.1 greylisted, try again later"
    assert (row.next_attempt_at - clock.now).total_seconds() == 300
    clock.advance(299)
    assert run_once(agent) == 0  # not due yet
    clock.advance(1)
    assert run_once(agent) == 1
    [(_, row)] = rows(session_factory)
    assert (row.state, row.attempts) == ("delivered", 2)
    assert [r.recipients for r in sink.received] == [["bob@remote.example"]]


def test_5xx_bounces_with_a_dsn_delivered_to_the_hosted_sender(
    out: Settings,
    dns_server: TestDNSServer,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    sinks: list[Sink],
    port: int,
    alice: None,
) -> None:
    dns_server.zone.mx("remote.example", (10, "mx.remote.example"))
    dns_server.zone.a("mx.remote.example", "127.0.0.3")
    sink = _sink(sinks, "127.0.0.3", port)
    sink.handler.rcpt_replies = ["550 5.1.1 <bob@remote.example>: no such user", "550 5.1.1 nope"]
    agent = make_agent(out, session_factory, store, Clock())
    qid = enqueue(out, session_factory, ["bob@remote.example", "carol@remote.example"])
    run_once(agent)
    assert sink.received == []
    # The bounce is one queued message from <> to the sender, listing both recipients ...
    bounce = [(m, r) for m, r in rows(session_factory) if m.origin == "bounce"]
    assert [(m.sender, r.address, r.state) for m, r in bounce] == [
        ("", "alice@hosted.example", "queued")
    ]
    # ... which the next round stores in alice's Maildir (never SMTP to ourselves).
    run_once(agent)
    assert sink.received == []
    dsn = _dsn(store)
    assert dsn["Auto-Submitted"] == "auto-replied"
    assert dsn["To"] == "alice@hosted.example"
    assert dsn["Return-Path"] == "<>"
    message_block, *rcpt_blocks = _status_blocks(dsn)
    assert message_block["Reporting-MTA"] == "dns; mx.test.example"
    assert message_block["X-Mailhost-Queue-ID"] == qid
    assert [
        (b["Final-Recipient"], b["Action"], b["Status"], b["Diagnostic-Code"], b["Remote-MTA"])
        for b in rcpt_blocks
    ] == [
        (
            "rfc822; bob@remote.example",
            "failed",
            "5.1.1",
            "smtp; 550 5.1.1 <bob@remote.example>: no such user",
            "dns; mx.remote.example[127.0.0.3]",
        ),
        (
            "rfc822; carol@remote.example",
            "failed",
            "5.1.1",
            "smtp; 550 5.1.1 nope",
            "dns; mx.remote.example[127.0.0.3]",
        ),
    ]
    headers = list(dsn.iter_parts())[2].get_content()  # type: ignore[attr-defined]
    assert "Subject: outbound test" in headers
    assert [r.state for m, r in rows(session_factory)] == ["bounced", "bounced", "delivered"]


def test_null_sender_never_gets_a_bounce(
    out: Settings,
    dns_server: TestDNSServer,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    sinks: list[Sink],
    port: int,
) -> None:
    dns_server.zone.mx("remote.example", (10, "mx.remote.example"))
    dns_server.zone.a("mx.remote.example", "127.0.0.3")
    sink = _sink(sinks, "127.0.0.3", port)
    sink.handler.rcpt_replies = ["550 5.1.1 no such user"]
    enqueue(out, session_factory, ["bob@remote.example"], sender="")
    run_once(make_agent(out, session_factory, store, Clock()))
    assert [(m.origin, r.state) for m, r in rows(session_factory)] == [("submission", "bounced")]


@pytest.mark.parametrize(
    ("zone", "status", "text"),
    [
        ("null_mx", "5.1.10", "accepts no mail (null MX, RFC 7505)"),
        ("nxdomain", "5.1.2", "does not exist"),
    ],
)
def test_null_mx_and_nxdomain_bounce_at_once(
    out: Settings,
    dns_server: TestDNSServer,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    alice: None,
    zone: str,
    status: str,
    text: str,
) -> None:
    if zone == "null_mx":
        dns_server.zone.null_mx("gone.example")
    agent = make_agent(out, session_factory, store, Clock())
    enqueue(out, session_factory, ["bob@gone.example"])
    run_once(agent)
    [(m, r), (bm, br)] = rows(session_factory)
    assert (r.state, r.attempts, r.last_reply_code) == ("bounced", 1, 550)
    assert text in (r.last_reply_text or "")
    run_once(agent)
    [_, block] = _status_blocks(_dsn(store))
    assert (block["Status"], block["Action"]) == (status, "failed")


def test_maximum_age_expires_and_bounces(
    out: Settings,
    dns_server: TestDNSServer,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    sinks: list[Sink],
    port: int,
    alice: None,
) -> None:
    dns_server.zone.mx("remote.example", (10, "mx.remote.example"))
    dns_server.zone.a("mx.remote.example", "127.0.0.3")
    sink = _sink(sinks, "127.0.0.3", port)
    sink.handler.rcpt_replies = ["452 4.2.2 mailbox full"] * 10
    clock = Clock()
    agent = make_agent(out, session_factory, store, clock)
    enqueue(out, session_factory, ["bob@remote.example"], now=clock.now)
    clock.advance(out.delivery_max_age)
    run_once(agent)
    [(_, r), _bounce] = rows(session_factory)
    assert (r.state, r.last_reply_code) == ("expired", 452)
    run_once(agent)
    [_, block] = _status_blocks(_dsn(store))
    assert (block["Action"], block["Status"]) == ("failed", "4.4.7")
    assert block["Diagnostic-Code"] == "smtp; 452 4.2.2 mailbox full"


def test_starttls_with_a_self_signed_certificate_is_used_and_recorded_unverified(
    out: Settings,
    dns_server: TestDNSServer,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    sinks: list[Sink],
    port: int,
    tls_files: tuple[Path, Path],
) -> None:
    dns_server.zone.mx("remote.example", (10, "mx.remote.example"))
    dns_server.zone.a("mx.remote.example", "127.0.0.3")
    sink = _sink(sinks, "127.0.0.3", port, tls=server_tls(*tls_files))
    enqueue(out, session_factory, ["bob@remote.example"])
    run_once(make_agent(out, session_factory, store, Clock()))
    assert [r.tls for r in sink.received] == [True]
    [(_, row)] = rows(session_factory)
    assert row.state == "delivered"
    assert row.last_tls is not None
    assert row.last_tls.startswith("TLSv1.")
    assert "unverified" in row.last_tls and "self-signed" in row.last_tls


def test_failed_starttls_handshake_is_recorded_and_sent_in_clear_text(
    out: Settings,
    dns_server: TestDNSServer,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    sinks: list[Sink],
    port: int,
    tls_files: tuple[Path, Path],
) -> None:
    dns_server.zone.mx("remote.example", (10, "mx.remote.example"))
    dns_server.zone.a("mx.remote.example", "127.0.0.3")
    # A server that only speaks TLS 1.0: our client (TLS 1.2 at least) cannot agree with it.
    broken = server_tls(*tls_files)
    broken.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    broken.maximum_version = ssl.TLSVersion.TLSv1
    broken.set_ciphers("DEFAULT:@SECLEVEL=0")
    sink = _sink(sinks, "127.0.0.3", port, tls=broken)
    enqueue(out, session_factory, ["bob@remote.example"])
    run_once(make_agent(out, session_factory, store, Clock()))
    assert [r.tls for r in sink.received] == [False]
    [(_, row)] = rows(session_factory)
    assert row.state == "delivered"
    assert row.last_tls is not None
    assert row.last_tls.startswith("none (STARTTLS handshake failed:")
    assert "clear text" in row.last_tls


def test_busy_destination_gets_parallel_reused_connections(
    out: Settings,
    dns_server: TestDNSServer,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    sinks: list[Sink],
    port: int,
) -> None:
    """20 messages to one domain with a per-destination limit of 3: three connections, each
    carrying several messages; 3 messages to another domain share a single connection."""
    dns_server.zone.mx("busy.example", (10, "mx.busy.example"))
    dns_server.zone.a("mx.busy.example", "127.0.0.5")
    dns_server.zone.mx("quiet.example", (10, "mx.quiet.example"))
    dns_server.zone.a("mx.quiet.example", "127.0.0.6")
    busy = _sink(sinks, "127.0.0.5", port)
    quiet = _sink(sinks, "127.0.0.6", port)
    for i in range(20):
        enqueue(out, session_factory, [f"r{i}@busy.example"])
    for i in range(3):
        enqueue(out, session_factory, [f"r{i}@quiet.example"])
    settings = out.model_copy(update={"delivery_destination_concurrency": 3})
    assert run_once(make_agent(settings, session_factory, store, Clock())) == 23
    assert sorted(r for got in busy.received for r in got.recipients) == sorted(
        f"r{i}@busy.example" for i in range(20)
    )
    assert len({got.peer for got in busy.received}) == 3
    assert len(quiet.received) == 3
    assert len({got.peer for got in quiet.received}) == 1
    assert {r.state for _, r in rows(session_factory)} == {"delivered"}
