"""The outbound queue on a real database: spool + rows, crash debris, claims and leases,
the retry schedule, notices for DSNs, and the operator actions."""

from __future__ import annotations

import datetime as dt
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.errors import ConflictError, NotFoundError, ValidationError
from app.models import AuditEntry, OutboundMessage, OutboundRecipient
from app.services import queue, queue_admin
from app.services.audit import CLI_ACTOR
from app.spool import SpoolStore
from tests.conftest import require_postgres

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
MESSAGE = b"From: a@sender.example\r\nSubject: hi\r\n\r\nbody\r\n"
SCHEDULE = queue.RetrySchedule(
    intervals=(300.0, 600.0, 1800.0), max_age=4 * 3600.0, delay_warning=3600.0
)


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def spool(tmp_path: Path) -> SpoolStore:
    return SpoolStore(tmp_path / "spool")


def _enqueue(
    factory: sessionmaker[Session],
    spool: SpoolStore,
    recipients: list[str],
    *,
    sender: str = "a@sender.example",
    now: dt.datetime = T0,
) -> OutboundMessage:
    file = spool.write([MESSAGE])
    with transaction(factory) as s:
        return queue.enqueue(
            s,
            spool_id=file.spool_id,
            size=file.size,
            sender=sender,
            recipients=recipients,
            origin="submission",
            now=now,
        )


def _claim(
    factory: sessionmaker[Session], worker: str, now: dt.datetime, limit: int = 100
) -> list[queue.Claimed]:
    with transaction(factory) as s:
        return queue.claim_due(s, worker=worker, now=now, limit=limit, lease=600)


def _rows(factory: sessionmaker[Session]) -> list[OutboundRecipient]:
    with factory() as s:
        return list(s.scalars(select(OutboundRecipient).order_by(OutboundRecipient.id)))


def test_enqueue_writes_one_spool_file_and_a_row_per_recipient(
    session_factory: sessionmaker[Session], spool: SpoolStore
) -> None:
    message = _enqueue(
        session_factory, spool, ["Bob@Remote.example", "carol@remote.example", "bob@remote.example"]
    )
    assert spool.read(message.spool_id) == MESSAGE
    assert message.size == len(MESSAGE)
    assert len(message.queue_id) == 16
    rows = _rows(session_factory)
    # The local part keeps its case (RFC 5321 section 2.4); a repeated recipient is one row.
    assert [(r.address, r.state, r.attempts) for r in rows] == [
        ("Bob@remote.example", "queued", 0),
        ("carol@remote.example", "queued", 0),
    ]
    assert all(r.next_attempt_at == T0 for r in rows)


@pytest.mark.parametrize(
    ("sender", "recipients", "field"),
    [
        ("a@sender.example", [], "recipients"),
        ("a@sender.example", ["no-at-sign"], "recipient"),
        ("a@sender.example", ["sp ace@remote.example"], "recipient"),
        ("a@sender.example", ["x@bad..domain"], "recipient"),
        ("<a@sender.example>", ["b@remote.example"], "sender"),
    ],
)
def test_enqueue_refuses_bad_addresses(
    session: Session, spool: SpoolStore, sender: str, recipients: list[str], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        queue.enqueue(
            session, spool_id="0" * 20, size=1, sender=sender, recipients=recipients,
            origin="submission", now=T0,
        )  # fmt: skip
    assert info.value.field == field


def test_crash_before_commit_leaves_an_orphan_the_cleaner_removes(
    session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    clock = Clock(time.time())
    spool = SpoolStore(tmp_path / "spool", clock=clock)
    kept = _enqueue(session_factory, spool, ["b@remote.example"])
    file = spool.write([MESSAGE])
    with pytest.raises(RuntimeError), transaction(session_factory) as s:
        queue.enqueue(
            s, spool_id=file.spool_id, size=file.size, sender="a@sender.example",
            recipients=["c@remote.example"], origin="submission", now=T0,
        )  # fmt: skip
        raise RuntimeError("crash between spool write and commit")
    # Nothing of the crashed enqueue is deliverable ...
    claimed = _claim(session_factory, "w1", T0 + dt.timedelta(days=1))
    assert [c.address for c in claimed] == ["b@remote.example"]
    # ... its file stays while it could still belong to an enqueue in progress ...
    with session_factory() as s:
        assert queue.clean_orphans(s, spool=spool, grace=3600) == 0
    assert spool.exists(file.spool_id)
    # ... and goes after the grace period; the queued message's file stays.
    clock.now += 3601
    with session_factory() as s:
        assert queue.clean_orphans(s, spool=spool, grace=3600) == 1
    assert not spool.exists(file.spool_id)
    assert spool.exists(kept.spool_id)


def test_spool_writer_removes_an_uncommitted_file(tmp_path: Path) -> None:
    spool = SpoolStore(tmp_path / "spool")
    with pytest.raises(OSError), spool.writer() as w:
        w.write(b"partial")
        raise OSError("disk full")
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []
    assert spool.list_files(older_than=-10) == []


def test_claim_takes_due_rows_once_and_an_expired_lease_again(
    session_factory: sessionmaker[Session], spool: SpoolStore
) -> None:
    _enqueue(session_factory, spool, ["b@remote.example", "c@remote.example"])
    assert _claim(session_factory, "w1", T0 - dt.timedelta(seconds=1)) == []  # not due yet
    first = _claim(session_factory, "w1", T0)
    assert {c.address for c in first} == {"b@remote.example", "c@remote.example"}
    # Leased: another worker gets nothing until the lease (600 s) has run out.
    assert _claim(session_factory, "w2", T0 + dt.timedelta(seconds=599)) == []
    again = _claim(session_factory, "w2", T0 + dt.timedelta(seconds=601))
    assert {c.recipient_id for c in again} == {c.recipient_id for c in first}
    # The first worker's late result is ignored: the rows now belong to w2.
    with transaction(session_factory) as s:
        late = queue.record_delivered(
            s, recipient_ids=[c.recipient_id for c in first], worker="w1",
            now=T0 + dt.timedelta(seconds=602), reply=queue.Reply(250, "ok", "mx"),
        )  # fmt: skip
    assert late.recorded == 0
    with transaction(session_factory) as s:
        done = queue.record_delivered(
            s, recipient_ids=[c.recipient_id for c in again], worker="w2",
            now=T0 + dt.timedelta(seconds=603), reply=queue.Reply(250, "2.0.0 ok", "mx.remote"),
        )  # fmt: skip
    assert done.recorded == 2
    assert done.finished_spool_ids == [first[0].spool_id]
    rows = _rows(session_factory)
    assert [(r.state, r.attempts, r.lease_owner, r.last_reply_host) for r in rows] == [
        ("delivered", 1, None, "mx.remote")
    ] * 2


def test_retry_schedule_expiry_and_one_delay_warning(
    session_factory: sessionmaker[Session], spool: SpoolStore
) -> None:
    message = _enqueue(session_factory, spool, ["b@remote.example"])
    reply = queue.Reply(451, "4.7.1 try later", "mx.remote.example")
    now = T0
    seen: list[tuple[str, dt.datetime, list[str]]] = []
    for _ in range(12):
        claimed = _claim(session_factory, "w1", now)
        if not claimed:
            break
        with transaction(session_factory) as s:
            outcome = queue.record_deferred(
                s, recipient_ids=[claimed[0].recipient_id], worker="w1", now=now, reply=reply,
                schedule=SCHEDULE,
            )  # fmt: skip
        row = _rows(session_factory)[0]
        seen.append((row.state, row.next_attempt_at, [n.action for n in outcome.notices]))
        now = row.next_attempt_at
    minutes = [(state, (at - T0).total_seconds() / 60, n) for state, at, n in seen]
    assert minutes == [
        ("deferred", 5.0, []),
        ("deferred", 15.0, []),  # +10 min
        ("deferred", 45.0, []),  # +30 min
        ("deferred", 75.0, []),  # the last interval repeats
        ("deferred", 105.0, ["delayed"]),  # tried at 75 min, past the 1 h warning: once
        ("deferred", 135.0, []),
        ("deferred", 165.0, []),
        ("deferred", 195.0, []),
        ("deferred", 225.0, []),
        ("deferred", 240.0, []),  # never scheduled past the maximum age (4 h)
        ("expired", 240.0, ["failed"]),
    ]
    assert _claim(session_factory, "w1", now + dt.timedelta(days=1)) == []
    assert spool.exists(message.spool_id)


def test_expiry_notice_and_finished_file(
    session_factory: sessionmaker[Session], spool: SpoolStore
) -> None:
    message = _enqueue(session_factory, spool, ["b@remote.example"])
    late = T0 + dt.timedelta(seconds=SCHEDULE.max_age)
    claimed = _claim(session_factory, "w1", late)
    with transaction(session_factory) as s:
        outcome = queue.record_deferred(
            s, recipient_ids=[claimed[0].recipient_id], worker="w1", now=late,
            reply=queue.Reply(421, "4.3.2 shutting down", "mx"), schedule=SCHEDULE,
        )  # fmt: skip
    [notice] = outcome.notices
    assert (notice.action, notice.status, notice.address, notice.queue_id) == (
        "failed", "4.4.7", "b@remote.example", message.queue_id,
    )  # fmt: skip
    assert outcome.finished_spool_ids == [message.spool_id]


def test_failure_notices_one_per_recipient_and_none_for_the_null_sender(
    session_factory: sessionmaker[Session], spool: SpoolStore
) -> None:
    _enqueue(session_factory, spool, ["b@remote.example", "c@remote.example"])
    _enqueue(session_factory, spool, ["d@remote.example"], sender="")
    claimed = _claim(session_factory, "w1", T0)
    with transaction(session_factory) as s:
        outcome = queue.record_failed(
            s, recipient_ids=[c.recipient_id for c in claimed], worker="w1", now=T0,
            reply=queue.Reply(550, "5.1.1 no such user", "mx.remote.example"),
        )  # fmt: skip
    assert outcome.recorded == 3
    assert [(n.address, n.status, n.action) for n in outcome.notices] == [
        ("b@remote.example", "5.1.1", "failed"),
        ("c@remote.example", "5.1.1", "failed"),
    ]
    assert len(outcome.finished_spool_ids) == 2
    assert {r.state for r in _rows(session_factory)} == {"bounced"}


@pytest.mark.parametrize(
    ("code", "text", "status"),
    [
        (550, "5.1.1 user unknown", "5.1.1"),
        (550, "user unknown", "5.0.0"),
        (452, "4.2.2 mailbox full", "4.2.2"),
        (451, "5.1.1 mismatched class", "4.0.0"),
        (554, "5.7.1 blocked", "5.7.1"),
    ],
)
def test_reply_status(code: int, text: str, status: str) -> None:
    assert queue.Reply(code, text).status == status


def test_operator_hold_release_retry_delete(
    session_factory: sessionmaker[Session], spool: SpoolStore
) -> None:
    message = _enqueue(session_factory, spool, ["b@remote.example"])
    with transaction(session_factory) as s:
        queue_admin.hold_message(s, actor=CLI_ACTOR, queue_id=message.queue_id.lower())
    assert _claim(session_factory, "w1", T0 + dt.timedelta(days=1)) == []
    with transaction(session_factory) as s:
        with pytest.raises(ConflictError):
            queue_admin.retry_message(s, actor=CLI_ACTOR, queue_id=message.queue_id, now=T0)
        [summary] = queue_admin.list_queue(s)
        assert summary.states == {"held": 1}
        queue_admin.release_message(s, actor=CLI_ACTOR, queue_id=message.queue_id, now=T0)
    claimed = _claim(session_factory, "w1", T0)
    with transaction(session_factory) as s:
        queue.record_deferred(
            s, recipient_ids=[claimed[0].recipient_id], worker="w1", now=T0,
            reply=queue.Reply(451, "later", "mx"), schedule=SCHEDULE,
        )  # fmt: skip
    assert _claim(session_factory, "w1", T0 + dt.timedelta(seconds=10)) == []
    with transaction(session_factory) as s:
        queue_admin.retry_message(
            s, actor=CLI_ACTOR, queue_id=message.queue_id, now=T0 + dt.timedelta(seconds=10)
        )
    assert len(_claim(session_factory, "w1", T0 + dt.timedelta(seconds=10))) == 1
    with transaction(session_factory) as s:
        assert queue_admin.delete_message(s, actor=CLI_ACTOR, queue_id=message.queue_id) == (
            message.spool_id
        )
    with session_factory() as s:
        with pytest.raises(NotFoundError):
            queue_admin.get_message(s, queue_id=message.queue_id)
        assert s.scalars(select(OutboundRecipient)).all() == []
        actions = s.scalars(select(AuditEntry.action).order_by(AuditEntry.id)).all()
    assert [a for a in actions if a.startswith("queue.")] == [
        "queue.hold", "queue.release", "queue.retry", "queue.delete",
    ]  # fmt: skip
    # The deleted message's file is no longer needed: the cleaner takes it.
    with session_factory() as s:
        assert queue.clean_orphans(s, spool=spool, grace=-10) == 1


def test_purge_finished_keeps_pending_messages(
    session_factory: sessionmaker[Session], spool: SpoolStore
) -> None:
    _enqueue(session_factory, spool, ["b@remote.example"])
    pending = _enqueue(session_factory, spool, ["c@remote.example"])
    claimed = [c for c in _claim(session_factory, "w1", T0) if c.address == "b@remote.example"]
    with transaction(session_factory) as s:
        queue.record_delivered(
            s, recipient_ids=[claimed[0].recipient_id], worker="w1", now=T0,
            reply=queue.Reply(250, "ok"),
        )  # fmt: skip
        assert queue.purge_finished(s, before=T0 + dt.timedelta(seconds=1)) == 1
    with session_factory() as s:
        assert [m.queue_id for m in s.scalars(select(OutboundMessage))] == [pending.queue_id]


@pytest.mark.postgres
def test_concurrent_claimers_never_get_the_same_row(
    engine: Engine, session_factory: sessionmaker[Session], spool: SpoolStore
) -> None:
    require_postgres(engine)
    for n in range(40):
        _enqueue(session_factory, spool, [f"r{n}-{i}@remote.example" for i in range(5)])
    # Two open transactions at once: the second skips the rows the first has locked.
    with session_factory() as a, session_factory() as b:
        got_a = queue.claim_due(a, worker="a", now=T0, limit=50, lease=600)
        got_b = queue.claim_due(b, worker="b", now=T0, limit=50, lease=600)
        assert len(got_a) == len(got_b) == 50
        assert not {c.recipient_id for c in got_a} & {c.recipient_id for c in got_b}
        a.rollback()
        b.rollback()
    # Many threads claiming small batches until the queue is empty: every row exactly once.
    taken: dict[str, list[int]] = {}
    barrier = threading.Barrier(4)

    def worker(name: str) -> None:
        mine: list[int] = []
        barrier.wait()
        while True:
            with transaction(session_factory) as s:
                got = queue.claim_due(s, worker=name, now=T0, limit=7, lease=600)
            if not got:
                break
            mine.extend(c.recipient_id for c in got)
        taken[name] = mine

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = [rid for ids in taken.values() for rid in ids]
    assert len(every) == len(set(every)) == 200
    assert sum(1 for ids in taken.values() if ids) >= 2
