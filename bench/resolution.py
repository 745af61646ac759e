"""Print recipient-resolution throughput with 10,000 mailboxes (figures, no assertions).

Usage: python bench/resolution.py [DATABASE_URL]   (default: a temporary SQLite file; a
PostgreSQL URL is wiped: tables dropped and recreated)
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import insert

from app.config import Settings
from app.db import Base, make_engine, make_session_factory, transaction
from app.models import Alias, AliasTarget, Customer, Domain, Mailbox
from app.services.resolution import resolve_recipient

MAILBOXES = 10_000
DOMAINS = 100
LOOKUPS = 2_000
ROUNDS = 5


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="mh-bench-resolution-")
    url = sys.argv[1] if len(sys.argv) > 1 else f"sqlite:///{Path(tmp) / 'bench.db'}"
    engine = make_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    factory = make_session_factory(engine)
    with factory() as s:
        s.execute(insert(Customer), [{"name": "c", "status": "active"}])
        s.execute(
            insert(Domain),
            [
                {"name": f"d{i}.example", "customer_id": 1, "default_quota_bytes": 1}
                for i in range(DOMAINS)
            ],
        )
        s.execute(
            insert(Mailbox),
            [
                {
                    "domain_id": i % DOMAINS + 1,
                    "local_part": f"u{i}",
                    "password_hash": "x",
                    "quota_bytes": 1 << 30,
                }
                for i in range(MAILBOXES)
            ],
        )
        s.execute(insert(Alias), [{"domain_id": 1, "local_part": f"a{i}"} for i in range(100)])
        s.execute(
            insert(AliasTarget),
            [
                {"alias_id": i + 1, "address": f"u{j}@d{j % DOMAINS}.example"}
                for i in range(100)
                for j in (i, i + 100, i + 200)
            ],
        )
        s.commit()

        def mailbox() -> str:
            k = random.randrange(MAILBOXES)
            return f"U{k}@D{k % DOMAINS}.example"

        cases: list[tuple[str, Callable[[], str]]] = [
            ("mailbox", mailbox),
            ("alias(3)", lambda: f"a{random.randrange(100)}@d0.example"),
            ("unknown", lambda: f"nobody@d{random.randrange(DOMAINS)}.example"),
        ]
        print(f"database: {engine.dialect.name}, {MAILBOXES} mailboxes, {LOOKUPS} lookups each")
        for kind, gen in cases:
            start = time.perf_counter()
            for _ in range(LOOKUPS):
                verdict = resolve_recipient(s, address=gen()).verdict
            elapsed = time.perf_counter() - start
            print(
                f"{kind:10s} {LOOKUPS / elapsed:8.0f} resolutions/s "
                f"{elapsed / LOOKUPS * 1e6:7.0f} us each  last verdict={verdict.value}"
            )

    # As the SMTP edge resolves one RCPT: a unit of work each (the handler before issue 16:
    # a Session in a transaction) against a Core connection each (the handler now).
    def via_session(address: str) -> None:
        with transaction(factory) as session:
            resolve_recipient(session, address=address)

    def via_connection(address: str) -> None:
        with engine.connect() as connection:
            resolve_recipient(connection, address=address)

    ways = {"session": via_session, "connection": via_connection}
    per_rcpt: dict[str, list[float]] = {name: [] for name in ways}
    for _round in range(ROUNDS):  # alternating, so machine noise hits both alike
        for name, way in ways.items():
            start = time.perf_counter()
            for _ in range(LOOKUPS):
                way(mailbox())
            per_rcpt[name].append((time.perf_counter() - start) / LOOKUPS * 1e3)
    for name, figures in per_rcpt.items():
        print(
            f"per RCPT via {name:10s} {statistics.median(figures):.3f} ms median "
            f"({min(figures):.3f}-{max(figures):.3f}) over {ROUNDS} alternating rounds"
        )
    engine.dispose()


if __name__ == "__main__":
    main()
