"""Sending limits under parallel submission: threads and separate processes never pass a limit."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.errors import SendLimitExceeded
from app.models import SendingCounter
from app.services import sending
from app.services.sending import SendingLimits
from tests.factories import make_customer, make_domain, make_mailbox

NOW = dt.datetime(2026, 12, 1, 14, 30, tzinfo=dt.UTC)
# The customer's 12 messages an hour bind before any mailbox's 10; recipients: 3 per message.
LIMITS = SendingLimits(
    mailbox_messages_per_hour=10,
    mailbox_recipients_per_day=1000,
    customer_messages_per_hour=12,
    customer_recipients_per_day=1000,
)


def _seed(session_factory: sessionmaker[Session]) -> list[int]:
    with transaction(session_factory) as db:
        customer = make_customer(db, "Parallel Ltd")
        make_domain(db, "parallel.example", customer)
        return [make_mailbox(db, f"u{i}@parallel.example").id for i in range(3)]


def _counts(session_factory: sessionmaker[Session]) -> dict[tuple[str, int, str], int]:
    with session_factory() as db:
        rows = db.execute(
            select(
                SendingCounter.scope,
                SendingCounter.scope_id,
                SendingCounter.metric,
                SendingCounter.count,
            )
        ).all()
    return {(scope, sid, metric): count for scope, sid, metric, count in rows}


def test_parallel_threads_never_exceed_the_limits(
    session_factory: sessionmaker[Session],
) -> None:
    """Nine threads, each with its own connection and transaction, five attempts each, over
    three mailboxes of one customer: exactly 12 messages are counted."""
    ids = _seed(session_factory)
    start = threading.Barrier(9)

    def worker(i: int) -> int:
        start.wait()
        accepted = 0
        for _ in range(5):
            try:
                with transaction(session_factory) as db:
                    sending.consume_sending(
                        db, mailbox_id=ids[i % 3], recipients=3, now=NOW, limits=LIMITS
                    )
                accepted += 1
            except SendLimitExceeded:
                pass
        return accepted

    with ThreadPoolExecutor(max_workers=9) as pool:
        accepted = sum(pool.map(worker, range(9)))
    assert accepted == 12
    counts = _counts(session_factory)
    customer_rows = {k: v for k, v in counts.items() if k[0] == "customer"}
    assert sorted(customer_rows.values()) == [12, 36]
    mailbox_messages = [
        v for k, v in counts.items() if k[0] == "mailbox" and k[2] == "messages_hour"
    ]
    assert sum(mailbox_messages) == 12 and max(mailbox_messages) <= 10


_WORKER = textwrap.dedent(
    """
    import datetime as dt, sys
    from app.config import Settings
    from app.db import make_engine, make_session_factory, transaction
    from app.errors import SendLimitExceeded
    from app.services import sending
    from app.services.sending import SendingLimits

    url, mailbox_id = sys.argv[1], int(sys.argv[2])
    limits = SendingLimits(10, 1000, 12, 1000)
    now = dt.datetime(2026, 12, 1, 14, 30, tzinfo=dt.UTC)
    engine = make_engine(Settings(database_url=url, _env_file=None))
    factory = make_session_factory(engine)
    sys.stdin.readline()  # start together
    accepted = 0
    for _ in range(6):
        try:
            with transaction(factory) as db:
                sending.consume_sending(
                    db, mailbox_id=mailbox_id, recipients=3, now=now, limits=limits
                )
            accepted += 1
        except SendLimitExceeded:
            pass
    print(accepted)
    """
)


def test_parallel_processes_never_exceed_the_limits(
    settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    """Six processes (as six submission servers on as many hosts would), each with its own
    engine: the database alone keeps the count exact (SQLite's write lock, PostgreSQL's row
    locks)."""
    ids = _seed(session_factory)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, settings.database_url, str(ids[i % 3])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(6)
    ]
    outputs = []
    for proc in procs:  # all are importing by now or soon; the line releases them
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        outputs.append(int(out.strip()))
    assert sum(outputs) == 12
    counts = _counts(session_factory)
    assert sorted(v for k, v in counts.items() if k[0] == "customer") == [12, 36]
