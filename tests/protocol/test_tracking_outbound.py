"""Message tracking of the delivery agent: each attempt with the remote host and its reply,
then delivered, deferred or bounced (and the DSN queued), against real DNS and real sinks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.maildir import MailboxRef, MaildirStore
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


def test_a_bounce_stored_locally_is_tracked_as_stored_and_checked_for_quota_warnings(
    settings: Settings,
    tmp_path: Path,
    dns_server: TestDNSServer,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    sink: tuple[Sink, int],
) -> None:
    server, port = sink
    out = outbound_settings(settings, tmp_path, dns_server.port, port)
    quota = 10_000
    with session_factory() as s:
        make_mailbox(s, "alice@hosted.example", quota=quota)
        s.commit()
    alice = MailboxRef("hosted.example", "alice")
    store.deliver([(alice, [b"x" * 7_900])])  # 79 %: the bounce crosses 80 %
    server.handler.rcpt_replies = ["550 5.1.1 no such user"]
    queue_id = enqueue(out, session_factory, ["dan@remote.example"])
    agent = make_agent(out, session_factory, store, Clock())
    assert run_once(agent) == 1  # bounced; the DSN to alice is queued
    assert run_once(agent) == 1  # the DSN, stored into alice's Maildir
    agent.tracking.stop()

    with session_factory() as s:
        found = tracking.search(s, query=tracking.normalise_query(address="alice@hosted.example"))
    dsn_ids = {e.queue_id for e in found if e.kind == "queued" and e.queue_id != queue_id}
    assert len(dsn_ids) == 1
    (dsn_id,) = dsn_ids
    story = [
        (e.kind, e.mailbox, e.service) for e in found if e.queue_id == dsn_id and e.kind != "queued"
    ]
    assert ("stored", "alice@hosted.example", "outbound") in story
    assert ("delivered", None, "outbound") in story
    [stored] = [e for e in found if e.queue_id == dsn_id and e.kind == "stored"]
    files = {m.uid: m for m in store.list_messages(alice)}
    assert stored.message_key in files  # the copy's Maildir name: POP3 events link to it
    assert (stored.reply or "").startswith("250 ") and "bounce" in (stored.detail or "")

    warnings = [
        m
        for m in files.values()
        if b"X-Mailhost-Quota-Warning:" in m.path.read_bytes().split(b"\n\n", 1)[0]
    ]
    assert len(warnings) == 1  # the bounce crossed a threshold: one warning, no more
    used = store.usage(alice).bytes
    assert used * 100 >= 80 * quota
