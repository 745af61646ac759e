"""Message tracking: the batched writer, the searches and pruning, on a real database."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.errors import ValidationError
from app.models import MessageEvent
from app.services import tracking as service
from app.tracking import Event, EventWriter, prune

T0 = dt.datetime(2026, 12, 1, 10, 0, tzinfo=dt.UTC)


def _count(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        return int(s.scalar(select(func.count()).select_from(MessageEvent)) or 0)


def _at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def _story(writer: EventWriter) -> None:
    """Three messages: one refused at RCPT, one for two mailboxes (one via an alias), one
    retrieved and deleted by POP3."""
    mx = {"service": "mx", "client_ip": "192.0.2.7", "helo": "client.example"}
    writer.record_all(
        [
            Event(kind="refused", queue_id="AAA001", sender="Bob@Remote.example",
                  recipient="nobody@hosted.example", stage="RCPT",
                  reply="550 5.1.1 Unknown user", occurred_at=_at(0), **mx),
            Event(kind="received", queue_id="BBB002", sender="bob@remote.example",
                  recipient="Info@Hosted.example", stage="RCPT", reply="250 2.1.5 Recipient ok",
                  detail="resolved to alice@hosted.example", occurred_at=_at(1), **mx),
            Event(kind="stored", queue_id="BBB002", sender="bob@remote.example",
                  recipient="info@hosted.example", mailbox="alice@hosted.example",
                  message_key="k-alice", occurred_at=_at(2), **mx),
            Event(kind="stored", queue_id="BBB002", sender="bob@remote.example",
                  recipient="carol@hosted.example", mailbox="carol@hosted.example",
                  message_key="k-carol", occurred_at=_at(2), **mx),
            Event(kind="retrieved", service="pop3", client_ip="198.51.100.9",
                  mailbox="alice@hosted.example", message_key="k-alice", stage="RETR",
                  occurred_at=_at(5)),
            Event(kind="stored", queue_id="CCC003", sender="eve@remote.example",
                  recipient="dave@hosted.example", mailbox="dave@hosted.example",
                  message_key="k-dave", occurred_at=_at(7), **mx),
        ]
    )  # fmt: skip


def test_writer_batches_fills_pop3_queue_ids_and_flushes_at_stop(
    session_factory: sessionmaker[Session],
) -> None:
    writer = EventWriter(session_factory, batch_size=4, flush_seconds=30)
    writer.start()
    story = EventWriter(None)
    story.enabled = True  # only collects: never started, never flushed
    _story(story)
    events = list(story._buffer)
    writer.record_all(events[:4])
    # 4 events make a batch: the thread writes it without waiting for the 30 s interval.
    deadline = time.monotonic() + 10
    while _count(session_factory) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _count(session_factory) == 4
    writer.record_all(events[4:])
    writer.stop()
    assert _count(session_factory) == 6 and writer.pending == 0
    with session_factory() as s:
        retrieved = s.scalars(select(MessageEvent).where(MessageEvent.kind == "retrieved")).one()
        refused = s.scalars(select(MessageEvent).where(MessageEvent.kind == "refused")).one()
    assert retrieved.queue_id == "BBB002"  # from the "stored" event of its Maildir name
    assert refused.sender == "bob@remote.example"  # stored lower-cased for searches
    assert refused.reply == "550 5.1.1 Unknown user"


def test_full_buffer_drops_and_counts_without_blocking(
    session_factory: sessionmaker[Session],
) -> None:
    writer = EventWriter(session_factory, max_buffer=3)
    for i in range(5):  # no thread running: nothing drains the buffer
        writer.record(Event(kind="refused", service="mx", queue_id=f"Q{i}"))
    assert writer.pending == 3 and writer.dropped == 2
    writer.stop()
    assert _count(session_factory) == 3


def test_a_failed_insert_goes_back_to_the_buffer(session_factory: sessionmaker[Session]) -> None:
    writer = EventWriter(session_factory)
    writer.record(Event(kind="refused", service="mx", queue_id="Q1"))
    broken = threading.Event()

    def failing_factory() -> Session:
        broken.set()
        raise OSError("database unreachable")

    writer._factory = failing_factory  # type: ignore[assignment]
    assert writer.flush() == 0 and broken.is_set()
    assert writer.pending == 1 and writer.dropped == 0
    writer._factory = session_factory
    assert writer.flush() == 1
    assert _count(session_factory) == 1


def test_events_waiting_for_a_queue_id_do_not_make_the_thread_spin(
    session_factory: sessionmaker[Session],
) -> None:
    """A full batch of POP3 events whose "stored" event is not (yet) written waits in the
    buffer; the thread must then sleep its flush interval between tries, not flush in a loop
    (it did: 64 % of a POP3 worker's samples in the issue-16 profile)."""
    writer = EventWriter(session_factory, batch_size=4, flush_seconds=0.2)
    flushes = 0
    real_flush = writer.flush

    def counting_flush() -> int:
        nonlocal flushes
        flushes += 1
        return real_flush()

    writer.flush = counting_flush  # type: ignore[method-assign]
    now = dt.datetime.now(dt.UTC)
    writer.record_all(
        [
            Event(kind="retrieved", service="pop3", message_key=f"unknown-{n}", occurred_at=now)
            for n in range(8)
        ]
    )
    writer.start()
    time.sleep(1.0)
    writer._stopping = True  # end the thread without the final flush of stop()
    with writer._cond:
        writer._cond.notify()
    assert writer._thread is not None
    writer._thread.join(5)
    assert 1 <= flushes <= 12, flushes  # about one try per 0.2 s (it was tens of thousands)
    assert writer.pending == 8 and _count(session_factory) == 0
    # A full batch of fresh events still wakes the thread at once.
    writer._thread, writer._stopping, flushes = None, False, 0
    writer.start()
    time.sleep(0.3)  # the thread is asleep again
    started = time.monotonic()
    writer.record_all([Event(kind="refused", service="mx", queue_id=f"Q{n}") for n in range(4)])
    while _count(session_factory) < 4 and time.monotonic() - started < 5:
        time.sleep(0.01)
    assert _count(session_factory) == 4
    writer.stop()


def test_disabled_writer_records_nothing(session_factory: sessionmaker[Session]) -> None:
    writer = EventWriter(session_factory, enabled=False)
    writer.start()
    writer.record(Event(kind="refused", service="mx"))
    writer.stop()
    assert writer.pending == 0 and _count(session_factory) == 0


@pytest.fixture
def seeded(session_factory: sessionmaker[Session]) -> sessionmaker[Session]:
    writer = EventWriter(session_factory)
    _story(writer)
    writer.stop()
    return session_factory


def _kinds(factory: sessionmaker[Session], **criteria: object) -> list[tuple[str, str | None]]:
    with factory() as s:
        query = service.normalise_query(**criteria)  # type: ignore[arg-type]
        return [(e.kind, e.queue_id) for e in service.search(s, query=query)]


def test_search_by_address_any_case_alias_or_mailbox(seeded: sessionmaker[Session]) -> None:
    story = [("received", "BBB002"), ("stored", "BBB002"), ("stored", "BBB002")]
    # The alias finds the whole message, and the mailbox's retrieval through its queue id.
    assert _kinds(seeded, address="INFO@hosted.EXAMPLE") == [*story, ("retrieved", "BBB002")]
    # The mailbox the alias resolved to finds the same message.
    assert _kinds(seeded, address="alice@hosted.example") == [*story, ("retrieved", "BBB002")]
    assert _kinds(seeded, address="nobody@hosted.example") == [("refused", "AAA001")]
    assert _kinds(seeded, address="bob@remote.example") == [("refused", "AAA001"), *story,
                                                             ("retrieved", "BBB002")]  # fmt: skip
    assert _kinds(seeded, address="someone@else.example") == []


def test_search_by_queue_id_client_and_time(seeded: sessionmaker[Session]) -> None:
    assert [k for k, _ in _kinds(seeded, queue_id="bbb002")] == [
        "received", "stored", "stored", "retrieved"
    ]  # fmt: skip
    assert _kinds(seeded, client_ip="198.51.100.9") == [
        ("received", "BBB002"), ("stored", "BBB002"), ("stored", "BBB002"),
        ("retrieved", "BBB002"),
    ]  # fmt: skip
    assert _kinds(seeded, since=_at(6)) == [("stored", "CCC003")]
    assert _kinds(seeded, until=_at(0.5)) == [("refused", "AAA001")]
    assert _kinds(seeded, address="bob@remote.example", since=_at(3)) == [("retrieved", "BBB002")]


def test_search_pages_in_time_order(seeded: sessionmaker[Session]) -> None:
    seen: list[int] = []
    after = None
    query = service.normalise_query()
    with seeded() as s:
        while True:
            page = service.search(s, query=query, after=after, limit=4)
            seen.extend(e.id for e in page)
            if len(page) < 4:
                break
            after = (page[-1].occurred_at, page[-1].id)
        every = s.scalars(
            select(MessageEvent.id).order_by(MessageEvent.occurred_at, MessageEvent.id)
        ).all()
    assert seen == list(every) and len(seen) == 6


@pytest.mark.parametrize(
    ("criteria", "field"),
    [
        ({"address": "two words@x.example"}, "address"),
        ({"address": "a" * 321}, "address"),
        ({"queue_id": "not-hex!"}, "queue_id"),
        ({"client_ip": "999.1.1.1"}, "client_ip"),
        ({"queue_id": "A" * 33}, "queue_id"),
        ({"since": _at(5), "until": _at(1)}, "until"),
    ],
)
def test_bad_criteria_name_the_field(criteria: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        service.normalise_query(**criteria)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_cursor_round_trip_and_bad_cursors(seeded: sessionmaker[Session]) -> None:
    query = service.normalise_query(address="bob@remote.example")
    with seeded() as s:
        first, cursor = service.search_page(s, query=query, cursor=None, limit=2)
        rest, end = service.search_page(s, query=query, cursor=cursor, limit=10)
    assert [e.kind for e in first + rest] == ["refused", "received", "stored", "stored",
                                              "retrieved"]  # fmt: skip
    assert cursor is not None and end is None
    for bad in ("x", "aWQ6MTI", "ZXY6MTI6YQ"):
        with pytest.raises(ValidationError):
            service.decode_cursor(bad)


def test_naive_times_are_utc() -> None:
    query = service.normalise_query(since=dt.datetime(2026, 12, 1, 10, 0))
    assert query.since == T0


def test_prune_removes_only_old_events_in_batches(seeded: sessionmaker[Session]) -> None:
    removed = prune(seeded, older_than=_at(3), batch_size=2)
    assert removed == 4  # two full batches of 2, then an empty one ends it
    assert [k for k, _ in _kinds(seeded)] == ["retrieved", "stored"]
    assert prune(seeded, older_than=_at(3), batch_size=2) == 0


def test_cli_prune_and_trace_errors(
    seeded: sessionmaker[Session], settings: Any, tmp_path: Any, monkeypatch: Any
) -> None:
    import io

    from mailhost.cli import main

    monkeypatch.chdir(tmp_path)
    url = ["--database-url", settings.database_url]
    out, err = io.StringIO(), io.StringIO()
    # The seeded events are from 2026-12-01; the default retention (30 days) keeps them.
    assert main([*url, "tracking", "prune", "--older-than-days", "3650"], stdout=out) == 0
    assert out.getvalue().startswith("removed 0 message event(s)")
    assert _count(seeded) == 6
    out = io.StringIO()
    assert main([*url, "tracking", "prune", "--older-than-days", "0", "--batch-size", "4"],
                stdout=out) == 0  # fmt: skip
    assert out.getvalue().startswith("removed 6 message event(s)")
    assert _count(seeded) == 0
    assert main([*url, "tracking", "prune", "--older-than-days", "-1"], stderr=err) == 2
    assert "--older-than-days" in err.getvalue()
    err = io.StringIO()
    assert main([*url, "trace", "--client-ip", "nope"], stderr=err, stdout=out) == 1
    assert "not an IP address" in err.getvalue()
