"""Message tracking of the delivery agent: each attempt with the remote host and its reply,
then delivered, deferred or bounced (and the DSN queued), against real DNS and real sinks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.maildir import MaildirStore
from app.services import tracking
from tests.dnsserver import TestDNSServer
from tests.factories import make_mailbox
from tests.protocol.outbound_helpers import (
    Clock,
    Sink,
    enqueue,
    free_port,
    make_agent,
    outbound_settings,
    run_once,
)


@pytest.fixture
def sink(dns_server: TestDNSServer) -> Iterator[tuple[Sink, int]]:
    port = free_port("127.0.0.4")
    dns_server.zone.mx("remote.example", (10, "mx.remote.example"))
    dns_server.zone.a("mx.remote.example", "127.0.0.4")
    started = Sink("127.0.0.4", port).start()
    yield started, port
    started.stop()


def _story(factory: sessionmaker[Session], queue_id: str) -> list[tuple[str, str | None, str]]:
    with factory() as s:
        events = tracking.search(s, query=tracking.normalise_query(queue_id=queue_id))
        return [(e.kind, e.recipient, e.reply or "") for e in events]


def test_attempts_deliveries_deferrals_and_bounces_are_tracked(
    settings: Settings,
    tmp_path: Path,
    dns_server: TestDNSServer,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    sink: tuple[Sink, int],
) -> None:
    server, port = sink
    out = outbound_settings(settings, tmp_path, dns_server.port, port)
    with session_factory() as s:
        make_mailbox(s, "alice@hosted.example")
        s.commit()
    server.handler.rcpt_replies = ["250 ok", "450 4.2.0 mailbox busy", "550 5.1.1 no such user"]
    queue_id = enqueue(
        out,
        session_factory,
        ["bob@remote.example", "carol@remote.example", "dan@remote.example"],
    )
    agent = make_agent(out, session_factory, store, Clock())
    assert run_once(agent) == 3
    agent.tracking.stop()
    story = _story(session_factory, queue_id)
    by_recipient = {
        rcpt: [(kind, reply[:3]) for kind, r, reply in story if r == rcpt]
        for rcpt in ("bob@remote.example", "carol@remote.example", "dan@remote.example")
    }
    assert by_recipient == {
        "bob@remote.example": [("attempt", "250"), ("delivered", "250")],
        "carol@remote.example": [("attempt", "450"), ("deferred", "450")],
        "dan@remote.example": [("attempt", "550"), ("bounced", "550"), ("queued", "")],
    }
    with session_factory() as s:
        found = tracking.search(s, query=tracking.normalise_query(address="dan@remote.example"))
        [attempt] = [
            e for e in found if e.kind == "attempt" and e.recipient == "dan@remote.example"
        ]
    assert attempt.remote_host == "mx.remote.example[127.0.0.4]"
    assert attempt.reply == "550 5.1.1 no such user"
    # The DSN to alice has a queue id of its own, tracked from the start.
    dsn = [reply for kind, r, reply in story if kind == "queued"]
    assert len(dsn) == 1
    with session_factory() as s:
        to_alice = tracking.search(
            s, query=tracking.normalise_query(address="alice@hosted.example")
        )
    assert any(e.kind == "queued" and e.queue_id != queue_id for e in to_alice)
