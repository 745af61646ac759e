"""What forwarding and auto-replies add to each delivery (figures, no assertions).

Per message the MX now asks ``DeliveryRules.prepare`` for the target mailboxes' rules: one
indexed query when no rule applies. This prints, in alternating rounds, the cost of that
call for a mailbox without rules, for one with an auto-reply (the query plus reading the
header section), and, as the yardstick, the check every delivery already made before
(``existing_mailbox_ids``, one query on the driver's cursor) and a whole recipient resolution.

Usage: .venv/bin/python bench/delivery_rules.py [DATABASE_URL] [--rounds 5] [--calls 2000]
(default: a temporary SQLite file; a PostgreSQL URL is wiped: tables dropped and recreated)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import insert  # noqa: E402

from app.config import Settings  # noqa: E402
from app.db import Base, make_engine, make_session_factory  # noqa: E402
from app.delivery_rules import DeliveryRules, Recipient  # noqa: E402
from app.models import AutoReply, Customer, Domain, Mailbox  # noqa: E402
from app.services.resolution import existing_mailbox_ids, resolve_recipient  # noqa: E402
from app.spool import SpoolStore  # noqa: E402

MAILBOXES = 10_000
BODY = [b"From: a@origin.example\nTo: u1@d.example\nSubject: x\n\n", b"x" * 4000 + b"\n"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url", nargs="?")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mh-bench-rules-"))
    url = args.url or f"sqlite:///{tmp / 'bench.db'}"
    settings = Settings(database_url=url, spool_root=tmp / "spool", _env_file=None)  # type: ignore[call-arg]
    engine = make_engine(settings)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    factory = make_session_factory(engine)
    with factory() as s:
        s.execute(insert(Customer), [{"name": "c", "status": "active"}])
        s.execute(
            insert(Domain), [{"name": "d.example", "customer_id": 1, "default_quota_bytes": 1}]
        )
        s.execute(
            insert(Mailbox),
            [
                {"domain_id": 1, "local_part": f"u{i}", "password_hash": "x", "quota_bytes": 0}
                for i in range(MAILBOXES)
            ],
        )
        s.execute(insert(AutoReply), [{"mailbox_id": 2, "subject": "Away", "body": "Away."}])
        s.commit()
    rules = DeliveryRules(settings, spool=SpoolStore(settings.spool_root))

    def prepare(mailbox_id: int) -> Callable[[], object]:
        recipients = [Recipient(mailbox_id, f"u{mailbox_id - 1}@d.example", "x@d.example")]
        return lambda: rules.prepare(
            factory,
            sender="a@origin.example",
            recipients=recipients,
            traces=[b""],
            body=lambda: BODY,
        )

    def existing() -> object:
        with engine.connect() as connection:
            return existing_mailbox_ids(connection, ids=[1])

    def resolve() -> object:
        with factory() as s:
            return resolve_recipient(s, address="u0@d.example")

    cases: list[tuple[str, Callable[[], object]]] = [
        ("rules: none (new per message)", prepare(1)),
        ("rules: an auto-reply (new)", prepare(2)),
        ("existing_mailbox_ids (before)", existing),
        ("resolve_recipient (before)", resolve),
    ]
    results: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(args.rounds):  # alternating rounds: load changes hit every case alike
        for name, call in cases:
            start = time.perf_counter()
            for _ in range(args.calls):
                call()
            results[name].append((time.perf_counter() - start) / args.calls * 1e6)
    print(
        f"database: {engine.dialect.name}, {MAILBOXES} mailboxes, "
        f"{args.calls} calls x {args.rounds} rounds"
    )
    base = statistics.median(results["resolve_recipient (before)"])
    for name, values in results.items():
        median = statistics.median(values)
        print(f"{name:32s} {median:8.1f} us/call  ({median / base:4.2f} x resolve_recipient)")


if __name__ == "__main__":
    main()
