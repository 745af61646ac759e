"""Message tracking searches at ISP scale: seed N message events (default 10 million, for
100,000 mailboxes over 30 days) and time the searches of the tracking page, p50 / p95.

Seeding: on PostgreSQL the rows go in with COPY and the indexes are built afterwards (as a
restore would), then ANALYZE; on SQLite with multi-row executemany. Each message has the
events the MX and POP3 write: received, stored, retrieved, deleted; one in five instead is
refused at RCPT (an unknown recipient). Senders come from 200,000 remote addresses, clients
from 50,000 addresses.

Searches (each --queries times with random values, through app.services.tracking.search_page,
first page of 50, as the portal and the API run them): a mailbox address (following its
messages' queue ids), a sender address, a queue id, a client address, a one-hour time range,
and a mailbox address within the last day. Goal (issue 14): p95 under 200 ms on PostgreSQL.

Usage: .venv/bin/python bench/tracking_search.py --database-url postgresql://postgres@127.0.0.1:5432/mh_bench_search
       [--events 10000000] [--mailboxes 100000] [--queries 200] [--reuse]
       (the database is dropped and created unless --reuse; without a URL: a temp SQLite file)
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import Engine, Table, func, select, text  # noqa: E402

from app.config import Settings  # noqa: E402
from app.db import make_engine, make_session_factory  # noqa: E402
from app.models import MessageEvent  # noqa: E402
from app.services import tracking  # noqa: E402

TABLE = cast(Table, MessageEvent.__table__)
COLUMNS = ["occurred_at", "kind", "service", "queue_id", "client_ip", "helo", "sender",
           "recipient", "mailbox", "stage", "reply", "detail", "message_key"]  # fmt: skip
START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
SPAN = dt.timedelta(days=30)
SENDERS = 200_000
CLIENTS = 50_000


def mailbox(i: int) -> str:
    return f"user{i}@d{i % 1000}.example"


def sender(i: int) -> str:
    return f"sender{i}@remote{i % 5000}.example"


def client(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def queue_id(m: int) -> str:
    return f"B{m:011X}"


def events(total: int, mailboxes: int, seed: int = 1) -> Iterator[tuple[Any, ...]]:
    """``total`` events, message after message, in time order."""
    rng = random.Random(seed)
    messages = total // 4 + 1
    step = SPAN / messages
    made = 0
    m = 0
    while made < total:
        at = START + step * m
        qid = queue_id(m)
        src = sender(rng.randrange(SENDERS))
        ip = client(rng.randrange(CLIENTS))
        if m % 5 == 4:
            rows: list[tuple[Any, ...]] = [
                (at, "refused", "mx", qid, ip, "mta.remote.example", src,
                 f"nobody{m}@d{m % 1000}.example", None, "RCPT", "550 5.1.1 Unknown user", None,
                 None),
            ]  # fmt: skip
        else:
            box = mailbox(rng.randrange(mailboxes))
            key = f"{int(at.timestamp())}.M{m}P1Q1.mx1"
            later = at + dt.timedelta(minutes=rng.randrange(1, 600))
            reader = client(rng.randrange(CLIENTS))
            rows = [
                (at, "received", "mx", qid, ip, "mta.remote.example", src, box, None, "RCPT",
                 "250 2.1.5 Recipient ok", f"resolved to {box}", None),
                (at, "stored", "mx", qid, ip, "mta.remote.example", src, box, box, "DATA",
                 f"250 2.0.0 Ok: delivered as {qid}", "size=4096", key),
                (later, "retrieved", "pop3", qid, reader, None, None, None, box, "RETR", "+OK",
                 None, key),
                (later, "deleted", "pop3", qid, reader, None, None, None, box, "QUIT", "+OK",
                 None, key),
            ]  # fmt: skip
        yield from rows[: total - made]
        made += len(rows)
        m += 1


def _indexes(engine: Engine, create: bool) -> None:
    with engine.begin() as conn:
        for index in TABLE.indexes:
            if create:
                index.create(conn)
            else:
                index.drop(conn, checkfirst=True)


def seed(engine: Engine, total: int, mailboxes: int) -> float:
    started = time.perf_counter()
    TABLE.drop(engine, checkfirst=True)
    TABLE.create(engine)
    _indexes(engine, create=False)
    if engine.dialect.name == "postgresql":
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            with cur.copy(f"COPY message_events ({', '.join(COLUMNS)}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                for n, row in enumerate(events(total, mailboxes)):
                    copy.write_row(row)
                    if n and n % 1_000_000 == 0:
                        print(f"  {n:,} rows copied ({time.perf_counter() - started:.0f} s)",
                              flush=True)  # fmt: skip
            raw.commit()
        finally:
            raw.close()
    else:
        batch: list[dict[str, Any]] = []
        with engine.begin() as conn:
            for row in events(total, mailboxes):
                batch.append(dict(zip(COLUMNS, row, strict=True)))
                if len(batch) == 5000:
                    conn.execute(TABLE.insert(), batch)
                    batch = []
            if batch:
                conn.execute(TABLE.insert(), batch)
    print(f"  rows in: {time.perf_counter() - started:.0f} s; building indexes", flush=True)
    _indexes(engine, create=True)
    with engine.begin() as conn:
        conn.execute(text("ANALYZE message_events" if engine.dialect.name == "postgresql"
                          else "ANALYZE"))  # fmt: skip
    return time.perf_counter() - started


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database-url")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--mailboxes", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--reuse", action="store_true", help="search the events seeded before")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="tracking-search-")
    url = args.database_url or f"sqlite:///{Path(tmp.name) / 'events.db'}"
    engine = make_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    if not args.reuse:
        print(f"seeding {args.events:,} events for {args.mailboxes:,} mailboxes on "
              f"{engine.dialect.name}", flush=True)  # fmt: skip
        print(f"seeded in {seed(engine, args.events, args.mailboxes):.0f} s", flush=True)
    factory = make_session_factory(engine)
    with factory() as s:
        count = s.scalar(select(func.count()).select_from(MessageEvent)) or 0
        last = s.scalar(select(func.max(MessageEvent.occurred_at)))
    messages = count // 4
    rng = random.Random(7)

    def hour() -> dict[str, Any]:
        at = START + SPAN * rng.random()
        return {"since": at, "until": at + dt.timedelta(hours=1)}

    cases: dict[str, Callable[[], dict[str, Any]]] = {
        "mailbox address": lambda: {"address": mailbox(rng.randrange(args.mailboxes))},
        "sender address": lambda: {"address": sender(rng.randrange(SENDERS))},
        "queue id": lambda: {"queue_id": queue_id(rng.randrange(messages))},
        "client address": lambda: {"client_ip": client(rng.randrange(CLIENTS))},
        "one hour": hour,
        "mailbox, last day": lambda: {
            "address": mailbox(rng.randrange(args.mailboxes)),
            "since": (last or START) - dt.timedelta(days=1),
        },
    }
    print(f"\n{count:,} events on {engine.dialect.name}; {args.queries} queries per search, "
          f"first page of 50")  # fmt: skip
    print(f"{'search':20} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'rows/page':>10}")
    for name, make in cases.items():
        timings: list[float] = []
        found: list[int] = []
        with factory() as s:
            for _ in range(args.queries):
                query = tracking.normalise_query(**make())
                t0 = time.perf_counter()
                rows, _ = tracking.search_page(s, query=query, cursor=None, limit=50)
                timings.append((time.perf_counter() - t0) * 1000)
                found.append(len(rows))
                s.rollback()
        print(f"{name:20} {statistics.median(timings):8.1f} {_percentile(timings, 0.95):8.1f} "
              f"{max(timings):8.1f} {statistics.mean(found):10.1f}", flush=True)  # fmt: skip
    engine.dispose()
    tmp.cleanup()


if __name__ == "__main__":
    main()
