"""Forwarding at delivery: hosted and remote, keep a copy or not, the SRS sender, loops.

Real parts: the MX (aiosmtpd on port 0) takes the message from smtplib, the delivery agent
sends the remote forward through the real DNS server to an aiosmtpd sink on 127.0.0.3 and
delivers the hosted forward into the target's Maildir.
"""

from __future__ import annotations

import datetime as dt
import re
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MailboxRef, MaildirStore
from app.models import OutboundMessage
from app.services import selfservice
from app.services.audit import CLI_ACTOR
from app.srs import SrsRewriter
from tests.dnsserver import TestDNSServer
from tests.factories import make_mailbox
from tests.protocol.outbound_helpers import (
    Clock,
    Sink,
    free_port,
    make_agent,
    outbound_settings,
    run_once,
)
from tests.protocol.smtp_helpers import IngressThread

SRS0 = re.compile(r"^SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=origin\.example=sender@hosted\.example$")


@pytest.fixture
def port() -> int:
    return free_port("127.0.0.3")


@pytest.fixture
def sink(port: int) -> Iterator[Sink]:
    running = Sink("127.0.0.3", port).start()
    yield running
    running.stop()


@pytest.fixture
def out(settings: Settings, tmp_path: Path, dns_server: TestDNSServer, port: int) -> Settings:
    dns_server.zone.mx("remote.example", (10, "mx.remote.example"))
    dns_server.zone.a("mx.remote.example", "127.0.0.3")
    return outbound_settings(settings, tmp_path, dns_server.port, port).model_copy(
        update={"srs_secret": SecretStr("a test secret for SRS, long enough")}
    )


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> dict[str, int]:
    with transaction(session_factory) as s:
        ids = {
            name: make_mailbox(s, f"{name}@hosted.example").id
            for name in ("sender", "keeper", "mover", "away", "dest")
        }
        forwards = {
            "keeper": ("bob@remote.example", True),
            "mover": ("Bob.Two@remote.example", False),
            "away": ("dest@hosted.example", False),
        }
        for name, (address, keep) in forwards.items():
            selfservice.set_forward(
                s, actor=CLI_ACTOR, mailbox_id=ids[name], address=address, keep_copy=keep
            )
    return ids


@pytest.fixture
def mx(
    out: Settings,
    world: dict[str, int],
    smtp_start: Callable[..., IngressThread],
) -> IngressThread:
    return smtp_start(out)


def _send(
    mx: IngressThread, rcpt: str, *, sender: str = "sender@origin.example", extra: str = ""
) -> None:
    message = (
        f"From: {sender}\r\nTo: {rcpt}\r\nSubject: forward me\r\n{extra}"
        f"Message-ID: <m-{rcpt}@origin.example>\r\n\r\nHello.\r\n"
    )
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as client:
        client.sendmail(sender, [rcpt], message)


def _now() -> Clock:
    # Rows are queued at the real time (the MX's clock): the agent's clock is a little later.
    return Clock(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5))


def _box(store: MaildirStore, address: str) -> list[bytes]:
    local, domain = address.split("@")
    out: list[bytes] = []
    for info in store.list_messages(MailboxRef(domain, local)):
        with store.open_message(info) as f:
            out.append(f.read())
    return out


def _forward_rows(factory: sessionmaker[Session]) -> list[OutboundMessage]:
    with factory() as s:
        return list(s.scalars(select(OutboundMessage).where(OutboundMessage.origin == "forward")))


def test_remote_forward_with_copy_reaches_the_sink_with_an_srs_sender(
    mx: IngressThread,
    out: Settings,
    sink: Sink,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
) -> None:
    _send(mx, "keeper@hosted.example")
    assert len(_box(store, "keeper@hosted.example")) == 1  # the copy kept
    [row] = _forward_rows(session_factory)
    # The forward is queued before the 250: the sink has nothing until the agent runs.
    assert sink.received == []
    assert run_once(make_agent(out, session_factory, store, _now())) == 1
    [got] = sink.received
    assert got.recipients == ["bob@remote.example"]
    assert got.sender == row.sender
    assert SRS0.match(got.sender), got.sender
    # A bounce to the SRS address can be decoded back to the original sender.
    assert SrsRewriter.from_settings(out).reverse(got.sender) == "sender@origin.example"
    assert b"Delivered-To: keeper@hosted.example" in got.data
    assert b"Return-Path" not in got.data.split(b"\r\n\r\n")[0]
    assert b"Hello." in got.data


def test_remote_forward_without_copy_stores_nothing_locally(
    mx: IngressThread,
    out: Settings,
    sink: Sink,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
) -> None:
    _send(mx, "mover@hosted.example")
    assert _box(store, "mover@hosted.example") == []
    run_once(make_agent(out, session_factory, store, _now()))
    [got] = sink.received
    assert got.recipients == ["Bob.Two@remote.example"]  # the remote local part kept as given
    assert SRS0.match(got.sender), got.sender


def test_hosted_forward_without_copy_lands_in_the_target_mailbox(
    mx: IngressThread,
    out: Settings,
    sink: Sink,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
) -> None:
    _send(mx, "away@hosted.example")
    assert _box(store, "away@hosted.example") == []
    [row] = _forward_rows(session_factory)
    assert row.sender == "sender@origin.example"  # hosted: no SRS needed
    run_once(make_agent(out, session_factory, store, _now()))
    [message] = _box(store, "dest@hosted.example")
    assert b"Delivered-To: away@hosted.example" in message
    assert b"Delivered-To: dest@hosted.example" in message
    assert sink.received == []


def test_null_sender_is_forwarded_with_the_null_sender(
    mx: IngressThread, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as client:
        client.sendmail("<>", ["keeper@hosted.example"], "Subject: bounce\r\n\r\nx\r\n")
    [row] = _forward_rows(session_factory)
    assert row.sender == ""


def test_a_looped_message_is_kept_and_not_forwarded_again(
    mx: IngressThread, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    _send(mx, "mover@hosted.example", extra="Delivered-To: mover@hosted.example\r\n")
    assert _forward_rows(session_factory) == []
    assert len(_box(store, "mover@hosted.example")) == 1  # kept although keep_copy is off


def test_a_failed_enqueue_answers_4xx_and_keeps_nothing(
    out: Settings,
    world: dict[str, int],
    smtp_start: Callable[..., IngressThread],
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("the spool cannot be created here")
    mx = smtp_start(out.model_copy(update={"spool_root": blocked}))
    client = smtplib.SMTP("127.0.0.1", mx.port, timeout=10)
    with client, pytest.raises(smtplib.SMTPDataError) as refused:
        client.sendmail("a@origin.example", ["keeper@hosted.example"], "Subject: x\r\n\r\nx\r\n")
    assert refused.value.smtp_code // 100 == 4
    assert _box(store, "keeper@hosted.example") == []
    assert _forward_rows(session_factory) == []
