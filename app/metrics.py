"""Every Prometheus instrument of Mailhost, the multiprocess directory, and the exposition.

Theory of operation. The instruments are prometheus-client objects made once per process, on
first use (``instruments()``), never at import: whether they write to memory or to the
multiprocess directory is decided when they are made, and the service entry points
(``mailhost serve``, ``mailhost smtp|pop3|web|submission``) call ``enable_multiprocess``
first. In multiprocess mode every worker writes its values to memory-mapped files in
``PROMETHEUS_MULTIPROC_DIR``; a scrape (``render``) reads every file there and sums the
counters over the workers. The directory is emptied at start (values of an earlier run would
be added to this one's), and the supervisor calls ``mark_process_dead`` for every worker that
exits, so its live gauges disappear (counters of dead workers stay: they are still counts).

Rules: every name starts with ``mailhost_``, in base units (seconds, bytes), and no label
takes a value per user, address or domain (unbounded at ISP scale); labels are a short fixed
set (service, stage, reply class, result).

Queue depth and oldest age are not instruments: ``QueueCollector`` reads them from the
database at scrape time (they are platform-wide, so the same on every host).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.multiprocess import mark_process_dead as _mark_process_dead
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.models import RCPT_PENDING, OutboundMessage, OutboundRecipient

ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: from a few milliseconds (an fsync) to the outbound retry schedule's hours.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
_DELIVERY_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400, 5 * 86400)


def reply_class(reply: str | int) -> str:
    """``"4xx"`` or ``"5xx"`` (or ``"2xx"``) of an SMTP reply line or code: the only label a
    refusal gets (the text names addresses)."""
    text = str(reply).lstrip()
    return f"{text[:1]}xx" if text[:1] in "2345" and text[:1] else "other"


class Instruments:
    """The instruments, each documented by its help text; see the README's Monitoring."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        r = registry
        self.connections = Counter(
            "mailhost_connections",
            "TCP connections accepted, by service",
            ["service"],
            registry=r,
        )
        self.connections_open = Gauge(
            "mailhost_connections_open",
            "TCP connections open now, by service",
            ["service"],
            multiprocess_mode="livesum",
            registry=r,
        )
        self.messages_accepted = Counter(
            "mailhost_messages_accepted",
            "Messages answered 250 after DATA, by service (smtp, submission)",
            ["service"],
            registry=r,
        )
        self.messages_refused = Counter(
            "mailhost_messages_refused",
            "Refusals (a recipient at RCPT, a message at DATA), by service, stage and reply class",
            ["service", "stage", "reply_class"],
            registry=r,
        )
        self.protocol_refused = Counter(
            "mailhost_protocol_refusals",
            "4xx/5xx replies the SMTP protocol layer made itself (syntax, size, bare LF, "
            "limits, timeouts), by service, stage (the command, connect or command) and class",
            ["service", "stage", "reply_class"],
            registry=r,
        )
        self.stored_bytes = Counter(
            "mailhost_stored_bytes",
            "Octets written into Maildirs (each copy counted), by service",
            ["service"],
            registry=r,
        )
        self.store_seconds = Histogram(
            "mailhost_store_duration_seconds",
            "End of DATA to the message being on disk (every copy fsync'd), by service",
            ["service"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.delivery_latency = Histogram(
            "mailhost_delivery_latency_seconds",
            "Outbound queue: from a message being queued to its recipient's final outcome",
            ["result"],
            buckets=_DELIVERY_BUCKETS,
            registry=r,
        )
        self.delivery_attempts = Counter(
            "mailhost_delivery_attempts",
            "Outbound delivery attempts by result (delivered, deferred, bounced)",
            ["result"],
            registry=r,
        )
        self.pop3_logins = Counter(
            "mailhost_pop3_logins",
            "POP3 logins by result (ok, failed, throttled, temporary)",
            ["result"],
            registry=r,
        )
        self.pop3_retrieved = Counter(
            "mailhost_pop3_messages_retrieved",
            "Messages sent to POP3 clients in full (RETR)",
            registry=r,
        )
        self.pop3_retrieved_bytes = Counter(
            "mailhost_pop3_retrieved_bytes",
            "Octets of messages sent to POP3 clients by RETR",
            registry=r,
        )
        self.login_throttled = Counter(
            "mailhost_login_throttled",
            "Logins refused by the login throttle, by door and by what was over budget",
            ["door", "reason"],
            registry=r,
        )
        # For the scanning work (issue 14 / scanners): scanner = "rspamd" | "clamd",
        # verdict = "clean" | "spam" | "virus" | "error"; call scanner_verdict().
        self.scanner_verdicts = Counter(
            "mailhost_scanner_verdicts",
            "Verdicts of the content scanners, by scanner and verdict",
            ["scanner", "verdict"],
            registry=r,
        )
        self.quota_warnings = Counter(
            "mailhost_quota_warnings",
            "Quota warning messages delivered, by threshold (percent)",
            ["threshold"],
            registry=r,
        )
        self.worker_start = Gauge(
            "mailhost_worker_start_time_seconds",
            "Start time of each live worker process (one series per pid while it lives)",
            multiprocess_mode="liveall",
            registry=r,
        )
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}

    def child(self, name: str, *labels: str) -> Any:
        """``getattr(self, name).labels(*labels)``, kept: prometheus-client's ``labels()``
        validates and looks the label values up under a lock on every call, which was
        about 60 % of the hooks' cost per message (profile in the README's Monitoring).
        The children are never removed, so keeping them is safe; label sets are bounded."""
        key = (name, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children.setdefault(key, getattr(self, name).labels(*labels))
        return found


_lock = threading.Lock()
_instruments: Instruments | None = None
_local_registry: CollectorRegistry | None = None


def instruments() -> Instruments:
    """This process's instruments, made on first use (after ``enable_multiprocess``)."""
    global _instruments, _local_registry
    current = _instruments
    if current is not None:
        return current
    with _lock:
        if _instruments is None:
            if multiprocess_dir() is None:
                _local_registry = CollectorRegistry(auto_describe=True)
                _instruments = Instruments(_local_registry)
            else:
                _instruments = Instruments(None)  # values live in the directory's files
        return _instruments


def multiprocess_dir() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def enable_multiprocess(directory: Path) -> None:
    """Make ``directory`` this service's multiprocess directory, emptied; call at the entry
    point before any instrument is used, in the parent of the workers (they inherit it)."""
    global _instruments, _local_registry
    directory = directory.resolve()
    if directory.is_dir():
        for entry in directory.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[ENV] = str(directory)
    with _lock:
        # prometheus-client picks memory or files when a value is made: make it pick files.
        prometheus_values.ValueClass = prometheus_values.get_value_class()  # type: ignore[no-untyped-call]
        _instruments = None
        _local_registry = None


def mark_process_dead(pid: int) -> None:
    """A worker exited: its live gauges go (the supervisor calls this when it reaps one)."""
    directory = multiprocess_dir()
    if directory is not None:
        _mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def worker_started() -> None:
    instruments().worker_start.set(time.time())


# --------------------------------------------------------------------------- edge helpers
def connection_opened(service: str) -> None:
    ins = instruments()
    ins.child("connections", service).inc()
    ins.child("connections_open", service).inc()


def connection_closed(service: str) -> None:
    instruments().child("connections_open", service).dec()


def message_accepted(service: str, *, copies: int, size: int, seconds: float) -> None:
    ins = instruments()
    ins.child("messages_accepted", service).inc()
    ins.child("stored_bytes", service).inc(copies * size)
    ins.child("store_seconds", service).observe(seconds)


def refused(service: str, stage: str, reply: str | int) -> None:
    instruments().child("messages_refused", service, stage, reply_class(reply)).inc()


def protocol_refused(service: str, stage: str, reply: str | int) -> None:
    """``stage``: a known command verb, ``connect`` or ``command`` (lower case; bounded)."""
    instruments().child("protocol_refused", service, stage, reply_class(reply)).inc()


def pop3_login(result: str) -> None:
    instruments().pop3_logins.labels(result).inc()


def pop3_retrieved(size: int, *, messages: int = 1) -> None:
    """``messages`` retrieved, ``size`` octets in all (POP3 counts a session's at once)."""
    ins = instruments()
    ins.pop3_retrieved.inc(messages)
    ins.pop3_retrieved_bytes.inc(size)


def login_throttled(door: str, reason: str) -> None:
    instruments().login_throttled.labels(door, reason).inc()


def scanner_verdict(scanner: str, verdict: str) -> None:
    """For the content scanners: one call per verdict (labels: see ``Instruments``)."""
    instruments().scanner_verdicts.labels(scanner, verdict).inc()


def delivery_outcome(result: str, *, queued_at: dt.datetime | None, final: bool) -> None:
    ins = instruments()
    ins.delivery_attempts.labels(result).inc()
    if final and queued_at is not None:
        age = (dt.datetime.now(dt.UTC) - queued_at).total_seconds()
        ins.delivery_latency.labels(result).observe(max(0.0, age))


def quota_warning(threshold: int) -> None:
    instruments().quota_warnings.labels(str(threshold)).inc()


# --------------------------------------------------------------------------- exposition
@dataclass(frozen=True, slots=True)
class QueueFigures:
    depth: dict[str, int]
    oldest_age_seconds: float


def queue_figures(session: Session, *, now: dt.datetime | None = None) -> QueueFigures:
    """Recipients still to deliver, by state, and the age of the oldest such message."""
    rows = session.execute(
        select(OutboundRecipient.state, func.count(), func.min(OutboundMessage.created_at))
        .join(OutboundMessage, OutboundMessage.id == OutboundRecipient.message_id)
        .where(OutboundRecipient.state.in_(RCPT_PENDING))
        .group_by(OutboundRecipient.state)
    ).all()
    depth = dict.fromkeys(RCPT_PENDING, 0)
    oldest: dt.datetime | None = None
    for state, count, created in rows:
        depth[state] = int(count)
        if created is not None:
            if created.tzinfo is None:  # SQLite's min() bypasses the column type
                created = dt.datetime.fromisoformat(str(created)).replace(tzinfo=dt.UTC)
            oldest = created if oldest is None else min(oldest, created)
    moment = now or dt.datetime.now(dt.UTC)
    age = max(0.0, (moment - oldest).total_seconds()) if oldest is not None else 0.0
    return QueueFigures(depth=depth, oldest_age_seconds=age)


class QueueCollector:
    """Queue depth and oldest age, read from the database at each scrape."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self._factory = session_factory

    def collect(self) -> Iterator[Metric]:
        with self._factory() as session:
            figures = queue_figures(session)
        depth = GaugeMetricFamily(
            "mailhost_queue_recipients",
            "Outbound queue: recipients still to deliver, by state",
            labels=["state"],
        )
        for state, count in figures.depth.items():
            depth.add_metric([state], count)
        yield depth
        yield GaugeMetricFamily(
            "mailhost_queue_oldest_age_seconds",
            "Outbound queue: age of the oldest message with a recipient still to deliver",
            value=figures.oldest_age_seconds,
        )


class Exposition:
    """What a scrape shows: every worker's instruments, plus the queue when asked for."""

    def __init__(self, *, session_factory: sessionmaker[Session] | None = None) -> None:
        self._queue = QueueCollector(session_factory) if session_factory is not None else None

    def collect(self) -> Iterable[Metric]:
        directory = multiprocess_dir()
        if directory is not None:
            registry = CollectorRegistry(auto_describe=True)
            MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
            yield from registry.collect()
        else:
            instruments()
            assert _local_registry is not None
            yield from _local_registry.collect()
        if self._queue is not None:
            yield from self._queue.collect()


def render(exposition: Exposition) -> bytes:
    """The Prometheus text format of ``exposition``."""
    return generate_latest(exposition)  # type: ignore[arg-type,unused-ignore]
