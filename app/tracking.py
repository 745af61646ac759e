"""Message tracking: the batched writer every edge records its message events through.

Theory of operation. An edge calls ``EventWriter.record(event)`` on its hot path (the SMTP
reply, a POP3 command). That only appends to a bounded in-memory buffer under a lock; a
background thread wakes every ``flush_seconds`` (or as soon as ``batch_size`` events wait),
takes up to ``batch_size`` events and writes them with one INSERT (SQLAlchemy's executemany,
a multi-row ``INSERT ... VALUES`` on PostgreSQL), in its own transaction. ``stop()`` flushes
what is left (an edge calls it at shutdown, after its last transaction).

Why drop rather than block when the buffer is full: a full buffer means the database has not
taken events for a while (down, or much slower than the mail). The mail itself is already on
disk and answered; making the SMTP reply wait for a diagnostic record would turn a tracking
outage into a mail outage (or a 451 that makes senders retry and duplicate). So the event is
dropped and counted (``dropped``, logged with the total at the next flush). A batch whose
INSERT fails goes back to the front of the buffer while there is room, so a short outage
loses nothing.

POP3 events know the Maildir unique name of the message (``message_key``), not its queue id;
the writer fills the queue id in from the ``stored`` event of that name, one indexed query
per batch that has such events, so a search by queue id shows the retrieval too. The stored
event may still be in the MX process's buffer: such an event waits (``QUEUE_ID_WAIT``) and is
tried again at the next flushes.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import threading
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import Table, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.models import MessageEvent, utcnow
from app.services import tracking as tracking_service

log = logging.getLogger("mailhost.tracking")

# Column widths of message_events: longer values are cut (an event never fails for its size).
_WIDTHS = {
    "queue_id": 32,
    "client_ip": 45,
    "helo": 255,
    "sender": 320,
    "recipient": 320,
    "mailbox": 320,
    "remote_host": 255,
    "stage": 16,
    "reply": 512,
    "detail": 512,
    "message_key": 128,
}
_LOWERED = ("sender", "recipient", "mailbox")
_TABLE = cast(Table, MessageEvent.__table__)
_CONTROLS = {c: " " for c in [*range(0x20), 0x7F]}
# How long a POP3 event waits in the buffer for the "stored" event of its message to be
# written (by another process's writer, up to one flush interval late) before it is written
# without a queue id (mail delivered before tracking, or by another MTA).
QUEUE_ID_WAIT = dt.timedelta(seconds=3)


@dataclass(frozen=True, slots=True)
class Event:
    """One message event as an edge reports it (see app.models.EVENT_KINDS)."""

    kind: str
    service: str
    queue_id: str | None = None
    client_ip: str | None = None
    helo: str | None = None
    sender: str | None = None
    recipient: str | None = None
    mailbox: str | None = None
    remote_host: str | None = None
    stage: str | None = None
    reply: str | None = None
    detail: str | None = None
    message_key: str | None = None
    occurred_at: dt.datetime = field(default_factory=utcnow)

    def row(self) -> dict[str, object]:
        """The row to insert: addresses lower-cased (searches are case-insensitive), every
        text cut to its column and control characters made spaces (one C-level pass each)."""
        values: dict[str, object] = {
            "occurred_at": self.occurred_at,
            "kind": self.kind,
            "service": self.service,
        }
        for name, width in _WIDTHS.items():
            text = getattr(self, name)
            if text is not None:
                if not text.isprintable():  # rare: C-speed check first
                    text = text.translate(_CONTROLS)
                if name in _LOWERED:
                    text = text.lower()
                text = text[:width]
            values[name] = text
        return values


class EventWriter:
    """The bounded buffer and its flushing thread (one per process and edge)."""

    def __init__(
        self,
        session_factory: sessionmaker[Session] | None,
        *,
        enabled: bool = True,
        max_buffer: int = 50_000,
        batch_size: int = 500,
        flush_seconds: float = 0.5,
    ) -> None:
        self._factory = session_factory
        self.enabled = enabled and session_factory is not None
        self._max_buffer = max_buffer
        self._batch_size = batch_size
        self._flush_seconds = flush_seconds
        self._buffer: collections.deque[Event] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        # Events recorded since the last batch was taken. The thread wakes early for these,
        # never for events put back to wait for a queue id: with a batch of those in the
        # buffer it would otherwise flush in a busy loop until they age out.
        self._fresh = 0
        self.dropped = 0
        self.written = 0
        self._dropped_logged = 0

    @classmethod
    def from_settings(
        cls, settings: Settings, session_factory: sessionmaker[Session]
    ) -> EventWriter:
        return cls(
            session_factory,
            enabled=settings.tracking_enabled,
            max_buffer=settings.tracking_buffer_events,
            batch_size=settings.tracking_batch_size,
            flush_seconds=settings.tracking_flush_seconds,
        )

    @classmethod
    def disabled(cls) -> EventWriter:
        return cls(None, enabled=False)

    # ------------------------------------------------------------------ hot path
    def record(self, event: Event) -> None:
        """Queue one event; never blocks on the database (drops and counts when full)."""
        if not self.enabled:
            return
        with self._cond:
            if len(self._buffer) >= self._max_buffer:
                self.dropped += 1
                return
            self._buffer.append(event)
            self._fresh += 1
            if self._fresh == self._batch_size:
                self._cond.notify()

    def record_all(self, events: list[Event]) -> None:
        for event in events:
            self.record(event)

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._buffer)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the flushing thread (after any fork: call it in the serving process)."""
        if not self.enabled or self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tracking-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread and write what is buffered (blocking: call it off the loop)."""
        thread, self._thread = self._thread, None
        with self._cond:
            self._stopping = True  # from here on nothing waits for a queue id
            self._cond.notify()
        if thread is not None:
            thread.join(timeout)
        if self.enabled:
            while self.flush():
                pass

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._stopping and self._fresh < self._batch_size:
                    self._cond.wait(self._flush_seconds)
                if self._stopping:
                    return
            try:
                while self.flush() >= self._batch_size and self._fresh:
                    pass
            except Exception:  # never let the thread die; the next round tries again
                log.exception("writing message events failed")

    # ------------------------------------------------------------------ writing
    def flush(self) -> int:
        """Write one batch now; returns how many events were written (0: nothing waiting or
        the write failed and the batch went back to the buffer)."""
        assert self._factory is not None
        with self._cond:
            count = min(len(self._buffer), self._batch_size)
            batch = [self._buffer.popleft() for _ in range(count)]
            self._fresh = max(0, self._fresh - count)
            dropped = self.dropped
        if dropped != self._dropped_logged:
            log.warning("message tracking dropped %d event(s) so far (buffer full)", dropped)
            self._dropped_logged = dropped
        if not batch:
            return 0
        waiting: list[Event] = []
        try:
            with transaction(self._factory) as session:
                rows = [event.row() for event in batch]
                _fill_queue_ids(session, rows)
                if not self._stopping:
                    # The "stored" event may still sit in another process's buffer.
                    young = utcnow() - QUEUE_ID_WAIT
                    keep = [
                        r["queue_id"] is not None or not r["message_key"] or e.occurred_at < young
                        for e, r in zip(batch, rows, strict=True)
                    ]
                    waiting = [e for e, k in zip(batch, keep, strict=True) if not k]
                    rows = [r for r, k in zip(rows, keep, strict=True) if k]
                if rows:
                    # Core executemany (the ORM's bulk path costs ~5x per row); on
                    # PostgreSQL a multi-row INSERT (insertmanyvalues).
                    session.connection().execute(_TABLE.insert(), rows)
        except Exception:
            log.exception("writing %d message event(s) failed; will retry", len(batch))
            with self._cond:
                room = self._max_buffer - len(self._buffer)
                kept = batch[:room] if room > 0 else []
                self.dropped += len(batch) - len(kept)
                self._buffer.extendleft(reversed(kept))
            return 0
        if waiting:
            with self._cond:
                self._buffer.extend(waiting)
        self.written += len(rows)
        return len(rows)


def _fill_queue_ids(session: Session, rows: list[dict[str, object]]) -> None:
    """Give POP3 events the queue id of the delivery that stored their message."""
    keys = {str(r["message_key"]) for r in rows if r["queue_id"] is None and r["message_key"]}
    if not keys:
        return
    found: dict[str, str] = {}
    for r in rows:  # a "stored" event in this very batch
        if r["kind"] == "stored" and r["message_key"] in keys and r["queue_id"]:
            found.setdefault(str(r["message_key"]), str(r["queue_id"]))
    for key, queue_id in session.execute(
        select(MessageEvent.message_key, MessageEvent.queue_id).where(
            MessageEvent.message_key.in_(keys), MessageEvent.kind == "stored"
        )
    ):
        if key is not None and queue_id is not None:
            found.setdefault(key, queue_id)
    for r in rows:
        if r["queue_id"] is None and r["message_key"] in found:
            r["queue_id"] = found[str(r["message_key"])]


def prune(
    session_factory: sessionmaker[Session],
    *,
    older_than: dt.datetime,
    batch_size: int = 5000,
    max_batches: int | None = None,
) -> int:
    """Delete events older than ``older_than`` in batches of ``batch_size``, one short
    transaction each (no long lock: writers and searches go on between batches); returns how
    many went."""
    total = 0
    batches = 0
    while max_batches is None or batches < max_batches:
        with transaction(session_factory) as session:
            removed = tracking_service.prune_batch(
                session, older_than=older_than, batch_size=batch_size
            )
        total += removed
        batches += 1
        if removed < batch_size:
            break
    return total


def retention_cutoff(settings: Settings, *, now: dt.datetime | None = None) -> dt.datetime:
    return (now or utcnow()) - dt.timedelta(days=settings.tracking_retention_days)
