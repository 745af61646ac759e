"""Relay domains end to end: the real MX (port 0), the real delivery agent, the customer's
server as an aiosmtpd sink on 127.0.0.2 (down, then up), real DNS on loopback, ETRN from an
allowed and a refused address, RCPT replies per recipient mode, callouts and their cache,
loops (Received count, a next hop greeting with our name), maximum age, mixed transactions."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MailboxRef, MaildirStore
from app.models import ORIGIN_BOUNCE, ORIGIN_RELAY, OutboundMessage, RelayDomain
from app.services import queue, relay, relay_recipients
from app.services.audit import CLI_ACTOR
from app.spool import SpoolStore
from tests.dnsserver import TestDNSServer
from tests.factories import make_customer, make_mailbox
from tests.protocol.outbound_helpers import (
    Clock,
    Sink,
    SinkHandler,
    free_port,
    make_agent,
    outbound_settings,
    rows,
    run_once,
)
from tests.protocol.smtp_helpers import IngressThread

SINK_HOST = "127.0.0.2"
OTHER_CLIENT = "127.0.0.3"


class CountingSink(SinkHandler):
    """Knows which users exist (for callouts) and counts the RCPTs it was asked."""

    def __init__(self, users: set[str] | None = None) -> None:
        super().__init__()
        self.users = users
        self.asked: list[str] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.asked.append(address)
        if self.users is not None and address.split("@")[0] not in self.users:
            # The kind of text a customer's Exchange answers: internal names, never echoed.
            return "550 5.1.1 <x@corp.local> unknown at exchange01.corp.local"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 ok"


@pytest.fixture
def port() -> int:
    return free_port(SINK_HOST)


@pytest.fixture
def out(settings: Settings, tmp_path: Path, dns_server: TestDNSServer, port: int) -> Settings:
    dns_server.zone.a("mail.shop.example", SINK_HOST)
    return outbound_settings(settings, tmp_path, dns_server.port, port)


@pytest.fixture
def sinks() -> Iterator[list[Sink]]:
    started: list[Sink] = []
    yield started
    for sink in started:
        sink.stop()


def start_sink(
    sinks: list[Sink], port: int, handler: SinkHandler | None = None, *, name: str | None = None
) -> Sink:
    sink = Sink(SINK_HOST, port)
    if handler is not None:
        sink.handler = handler
        sink.controller.handler = handler
    if name is not None:
        sink.controller.SMTP_kwargs["hostname"] = name
    sinks.append(sink.start())
    return sink


@pytest.fixture
def mx(
    out: Settings,
    smtp_start: Callable[..., IngressThread],
) -> Callable[[], IngressThread]:
    return lambda: smtp_start(out, smtp_resolution_cache_seconds=0)


def add_relay(factory: sessionmaker[Session], name: str, next_hop: str, **kw: Any) -> int:
    with transaction(factory) as s:
        customer = make_customer(s, f"Customer of {name}")
        domain = relay.create_relay_domain(
            s, actor=CLI_ACTOR, customer_id=customer.id, name=name, next_hop=next_hop, **kw
        )
        return domain.id


def message(subject: str, received: int = 0) -> str:
    trace = "".join(
        f"Received: from hop{i}.example by hop{i + 1}.example; Thu, 3 Dec 2026 12:00:00 +0000\r\n"
        for i in range(received)
    )
    return (
        f"{trace}From: a@sender.example\r\nTo: x@shop.example\r\nSubject: {subject}\r\n\r\nhi\r\n"
    )


def client(ingress: IngressThread, source: str = "127.0.0.1") -> smtplib.SMTP:
    smtp = smtplib.SMTP("127.0.0.1", ingress.port, timeout=10, source_address=(source, 0))
    smtp.ehlo("client.example")
    return smtp


def rcpt(smtp: smtplib.SMTP, address: str) -> tuple[int, str]:
    code, text = smtp.rcpt(address)
    return code, text.decode()


def test_down_then_up_delivers_in_order_and_etrn(
    out: Settings,
    port: int,
    mx: Callable[[], IngressThread],
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    sinks: list[Sink],
) -> None:
    domain_id = add_relay(
        session_factory,
        "shop.example",
        f"mail.shop.example:{port}",
        flush_networks=["127.0.0.1"],
    )
    with transaction(session_factory) as s:
        relay_recipients.add_recipient(s, actor=CLI_ACTOR, domain_id=domain_id, address="x")
    ingress = mx()
    with client(ingress) as smtp:
        assert smtp.has_extn("etrn")
        for n in range(3):
            smtp.sendmail("a@sender.example", ["X@shop.example"], message(f"m{n}"))
    assert [(m.origin, r.state) for m, r in rows(session_factory)] == [(ORIGIN_RELAY, "queued")] * 3

    clock = Clock(dt.datetime.now(dt.UTC))
    agent = make_agent(out, session_factory, store, clock)
    assert run_once(agent) == 3  # the customer's server is down: deferred
    assert {r.state for _, r in rows(session_factory)} == {"deferred"}
    assert "4.4.1" in (rows(session_factory)[0][1].last_reply_text or "")

    sink = start_sink(sinks, port)
    clock.now = dt.datetime.now(dt.UTC)
    assert run_once(agent) == 0  # up now, but nothing is due before the retry time

    with client(ingress, OTHER_CLIENT) as other:
        code, text = other.docmd("ETRN", "shop.example")
    assert (code, text.decode()) == (459, "5.7.1 Node shop.example not allowed: not authorised")
    clock.now = dt.datetime.now(dt.UTC)
    assert run_once(agent) == 0 and sink.received == []

    with client(ingress) as smtp:
        assert smtp.docmd("ETRN", "shop.example")[0] == 250
        assert smtp.docmd("ETRN", "hosted.nowhere.example")[0] == 459
        assert smtp.docmd("ETRN", "#queue")[0] == 458
        assert smtp.docmd("ETRN")[0] == 501
        smtp.mail("a@sender.example")
        assert smtp.docmd("ETRN", "shop.example")[0] == 503
    clock.now = dt.datetime.now(dt.UTC)
    assert run_once(agent) == 3
    subjects = [
        email.message_from_bytes(r.data, policy=email.policy.default)["Subject"]
        for r in sink.received
    ]
    assert subjects == ["m0", "m1", "m2"]
    assert all(r.recipients == ["X@shop.example"] for r in sink.received)
    first = email.message_from_bytes(sink.received[0].data, policy=email.policy.default)
    assert "by mx.test.example (Mailhost)" in str(first["Received"])
    assert "Delivered-To" not in first
    assert {r.state for _, r in rows(session_factory)} == {"delivered"}
    with client(ingress) as smtp:
        assert smtp.docmd("ETRN", "shop.example") == (
            251,
            b"2.0.0 OK, no messages waiting for node shop.example",
        )


def test_rcpt_replies_per_mode(
    out: Settings,
    port: int,
    mx: Callable[[], IngressThread],
    session_factory: sessionmaker[Session],
    sinks: list[Sink],
) -> None:
    closed = free_port(SINK_HOST)
    list_id = add_relay(session_factory, "list.example", f"{SINK_HOST}:{port}")
    add_relay(session_factory, "verify.example", f"{SINK_HOST}:{port}", recipient_mode="verify")
    add_relay(session_factory, "any.example", f"{SINK_HOST}:{port}", recipient_mode="any")
    add_relay(session_factory, "down.example", f"{SINK_HOST}:{closed}", recipient_mode="verify")
    suspended = add_relay(session_factory, "frozen.example", f"{SINK_HOST}:{port}")
    with transaction(session_factory) as s:
        relay_recipients.add_recipient(s, actor=CLI_ACTOR, domain_id=list_id, address="anna")
        relay_recipients.add_recipient(s, actor=CLI_ACTOR, domain_id=suspended, address="anna")
        from app.services import domains

        domains.set_domain_status(s, actor=CLI_ACTOR, domain_id=suspended, status="suspended")
        make_mailbox(s, "user@hosted.example")
    sink = CountingSink({"anna"})
    start_sink(sinks, port, sink)
    ingress = mx()
    table = [
        ("anna@list.example", 250, "2.1.5"),
        ("ANNA@List.Example", 250, "2.1.5"),
        ("bert@list.example", 550, "5.1.1"),
        ("anna@verify.example", 250, "2.1.5"),
        ("bert@verify.example", 550, "5.1.1"),
        ("whoever@any.example", 250, "2.1.5"),
        ("anna@down.example", 451, "4.4.1"),
        ("anna@frozen.example", 550, "5.2.1"),
        ("user@hosted.example", 250, "2.1.5"),
        ("anna@elsewhere.example", 554, "5.7.1"),
    ]
    with client(ingress) as smtp:
        smtp.mail("a@sender.example")
        got = [(address, *rcpt(smtp, address)) for address, _, _ in table]
    assert [(a, code, text.split()[0]) for a, code, text in got] == table
    for _, _, text in got:
        assert "corp.local" not in text and "exchange01" not in text
    assert sorted(sink.asked) == ["anna@verify.example", "bert@verify.example"]


def test_callout_cache_and_mixed_transaction(
    out: Settings,
    port: int,
    mx: Callable[[], IngressThread],
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    sinks: list[Sink],
) -> None:
    add_relay(session_factory, "cached.example", f"{SINK_HOST}:{port}", recipient_mode="verify")
    add_relay(
        session_factory,
        "fresh.example",
        f"{SINK_HOST}:{port}",
        recipient_mode="verify",
        callout_cache_seconds=0,
    )
    with transaction(session_factory) as s:
        mailbox = make_mailbox(s, "user@hosted.example")
        ref = MailboxRef.of(mailbox)
    sink = CountingSink({"anna"})
    start_sink(sinks, port, sink)
    ingress = mx()
    for _ in range(2):
        with client(ingress) as smtp:
            smtp.mail("a@sender.example")
            assert rcpt(smtp, "anna@cached.example")[0] == 250
            assert rcpt(smtp, "nobody@cached.example")[0] == 550
            assert rcpt(smtp, "anna@fresh.example")[0] == 250
    assert sorted(sink.asked) == [
        "anna@cached.example",
        "anna@fresh.example",
        "anna@fresh.example",
        "nobody@cached.example",
    ]
    # The next hop goes away: cached answers still hold, uncached ones become 451, never 5xx.
    sinks.pop().stop()
    with client(ingress) as smtp:
        smtp.mail("a@sender.example")
        assert rcpt(smtp, "anna@cached.example")[0] == 250
        assert rcpt(smtp, "anna@fresh.example")[:1] == (451,)
        assert rcpt(smtp, "user@hosted.example")[0] == 250
        code, _ = smtp.data(message("mixed").encode())
        assert code == 250
    # One transaction: the hosted copy in the Maildir, the relay copy in the queue.
    assert len(store.list_messages(ref)) == 1
    ((msg, row),) = rows(session_factory)
    assert (msg.origin, row.address, row.state) == (ORIGIN_RELAY, "anna@cached.example", "queued")
    spooled = SpoolStore(out.spool_root).read(msg.spool_id)
    assert spooled.startswith(b"Received: from client.example ([127.0.0.1])\r\n")
    assert b"\r\nSubject: mixed\r\n" in spooled
    assert b"\n" not in spooled.replace(b"\r\n", b"")  # CRLF only, as the queue sends it


def test_received_count_over_30_is_refused(
    mx: Callable[[], IngressThread],
    session_factory: sessionmaker[Session],
) -> None:
    with transaction(session_factory) as s:
        make_mailbox(s, "user@hosted.example")
    ingress = mx()
    with client(ingress) as smtp:
        smtp.mail("a@sender.example")
        smtp.rcpt("user@hosted.example")
        code, text = smtp.data(message("loop", received=31).encode())
        assert (code, text.decode().split()[0]) == (554, "5.4.6")
        smtp.mail("a@sender.example")
        smtp.rcpt("user@hosted.example")
        assert smtp.data(message("thirty", received=30).encode())[0] == 250


def test_next_hop_greeting_with_our_name_holds_the_domain(
    out: Settings,
    port: int,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    sinks: list[Sink],
    dns_server: TestDNSServer,
) -> None:
    # "MX of a named host": mx:customer.example -> in.customer.example -> 127.0.0.2.
    dns_server.zone.mx("customer.example", (10, "in.customer.example"))
    dns_server.zone.a("in.customer.example", SINK_HOST)
    domain_id = add_relay(session_factory, "loop.example", "mx:customer.example")
    start_sink(sinks, port, name=out.hostname)  # greets as mx.test.example: us
    clock = Clock(dt.datetime.now(dt.UTC))
    with transaction(session_factory) as s:
        queue.enqueue(
            s,
            spool_id=SpoolStore(out.spool_root).write([message("x").encode()]).spool_id,
            size=10,
            sender="a@sender.example",
            recipients=["x@loop.example"],
            origin=ORIGIN_RELAY,
            now=clock.now,
        )
    agent = make_agent(out, session_factory, store, clock)
    assert run_once(agent) == 1
    ((_, row),) = rows(session_factory)
    assert row.state == "held" and "mail loop" in (row.last_reply_text or "")
    with session_factory() as s:
        settings_row = s.get(RelayDomain, domain_id)
        assert settings_row is not None and settings_row.held
        assert "greets as mx.test.example" in (settings_row.hold_reason or "")
    clock.advance(3600)
    assert run_once(agent) == 0  # held: nothing is tried


def test_tls_required_and_max_age_bounce(
    out: Settings,
    port: int,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    sinks: list[Sink],
) -> None:
    add_relay(
        session_factory,
        "strict.example",
        f"mail.shop.example:{port}",
        tls_policy="required",
        max_queue_age=3600,
    )
    sink = start_sink(sinks, port)  # offers no STARTTLS
    clock = Clock(dt.datetime.now(dt.UTC))
    with transaction(session_factory) as s:
        queue.enqueue(
            s,
            spool_id=SpoolStore(out.spool_root).write([message("strict").encode()]).spool_id,
            size=10,
            sender="a@sender.example",
            recipients=["x@strict.example"],
            origin=ORIGIN_RELAY,
            now=clock.now,
        )
    agent = make_agent(out, session_factory, store, clock)
    assert run_once(agent) == 1
    ((_, row),) = rows(session_factory)
    assert row.state == "deferred" and "4.7.10 TLS is required" in (row.last_reply_text or "")
    assert sink.received == []
    # The domain's own maximum age (1 hour, not the platform's 5 days): expired, and a DSN.
    clock.advance(3600)
    assert run_once(agent) == 1
    states = [(m.origin, r.address, r.state) for m, r in rows(session_factory)]
    assert states[0] == (ORIGIN_RELAY, "x@strict.example", "expired")
    assert states[1][:2] == (ORIGIN_BOUNCE, "a@sender.example")
    with session_factory() as s:
        bounce = s.scalars(
            select(OutboundMessage).where(OutboundMessage.origin == ORIGIN_BOUNCE)
        ).one()
        dsn = SpoolStore(out.spool_root).read(bounce.spool_id)
    assert b"Status: 4.4.7" in dsn and b"x@strict.example" in dsn


def test_mail_for_a_held_domain_waits_until_released(
    out: Settings,
    port: int,
    mx: Callable[[], IngressThread],
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    sinks: list[Sink],
) -> None:
    domain_id = add_relay(
        session_factory, "held.example", f"{SINK_HOST}:{port}", recipient_mode="any"
    )
    with transaction(session_factory) as s:
        relay.hold(s, actor=CLI_ACTOR, domain_id=domain_id, reason="customer moving office")
    sink = start_sink(sinks, port)
    ingress = mx()
    with client(ingress) as smtp:
        smtp.sendmail("a@sender.example", ["x@held.example"], message("while held"))
    assert [r.state for _, r in rows(session_factory)] == ["held"]
    clock = Clock(dt.datetime.now(dt.UTC))
    agent = make_agent(out, session_factory, store, clock)
    assert run_once(agent) == 0 and sink.received == []
    with transaction(session_factory) as s:
        assert relay.release(s, actor=CLI_ACTOR, domain_id=domain_id, now=clock.now) == 1
    assert run_once(agent) == 1
    assert [r.recipients for r in sink.received] == [["x@held.example"]]


def test_one_connection_oldest_first_with_more_messages_than_one_lane_takes(
    out: Settings,
    port: int,
    mx: Callable[[], IngressThread],
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    sinks: list[Sink],
) -> None:
    # 12 messages: a remote domain would get extra lanes (one per 4 waiting) and interleave
    # them; a relay domain gets one connection and the order they arrived in.
    add_relay(session_factory, "many.example", f"{SINK_HOST}:{port}", recipient_mode="any")
    sink = start_sink(sinks, port)
    ingress = mx()
    with client(ingress) as smtp:
        for n in range(12):
            smtp.sendmail("a@sender.example", ["x@many.example"], message(f"n{n:02d}"))
    agent = make_agent(out, session_factory, store, Clock(dt.datetime.now(dt.UTC)))
    assert run_once(agent) == 12
    subjects = [
        email.message_from_bytes(r.data, policy=email.policy.default)["Subject"]
        for r in sink.received
    ]
    assert subjects == [f"n{n:02d}" for n in range(12)]
    assert len({r.peer for r in sink.received}) == 1  # one connection (client port)
    assert {r.state for _, r in rows(session_factory)} == {"delivered"}
