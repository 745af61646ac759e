"""What the sending limits cost per submitted message: check_sending + consume_sending in
their own transaction (as the submission edge commits them with its queue rows), from T
threads over M mailboxes of one customer, on SQLite or PostgreSQL. Rounds alternate between
"check only" and "check + consume" so the ratio is measured within one run.

Usage: python bench/sending_limits.py [--database-url URL] [--threads 1] [--mailboxes 8]
       [--count 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import text

import app.models  # noqa: F401
from app.config import Settings
from app.db import Base, make_engine, make_session_factory, transaction
from app.services import customers, domains, mailboxes, sending
from app.services.audit import CLI_ACTOR
from app.services.sending import SendingLimits

LIMITS = SendingLimits(10**7, 10**7, 10**7, 10**7)  # never refuses: measures the cost only


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mailboxes", type=int, default=8)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    engine = make_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    if engine.dialect.name == "postgresql":
        Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    factory = make_session_factory(engine)
    with transaction(factory) as s:
        c = customers.create_customer(s, actor=CLI_ACTOR, name="Bench Ltd")
        s.flush()
        domains.create_domain(s, actor=CLI_ACTOR, customer_id=c.id, name="bench.example")
        s.flush()
        ids = [
            mailboxes.create_mailbox(
                s, actor=CLI_ACTOR, address=f"u{i}@bench.example", password="bench password"
            ).id
            for i in range(args.mailboxes)
        ]
    now = dt.datetime.now(dt.UTC)

    def one(n: int, consume: bool) -> None:
        mailbox_id = ids[n % len(ids)]
        with transaction(factory) as s:
            sending.check_sending(s, mailbox_id=mailbox_id, now=now, recipients=2, limits=LIMITS)
            if consume:
                sending.consume_sending(
                    s, mailbox_id=mailbox_id, recipients=2, now=now, limits=LIMITS
                )
            else:
                s.execute(text("SELECT 1"))

    print(f"{engine.dialect.name}, {args.threads} thread(s), {args.mailboxes} mailboxes")
    for r in range(args.rounds):
        for consume in (False, True):
            start = time.perf_counter()
            with ThreadPoolExecutor(args.threads) as pool:
                list(pool.map(lambda n, c=consume: one(n, c), range(args.count)))
            rate = args.count / (time.perf_counter() - start)
            label = "check + consume" if consume else "check only     "
            print(f"round {r + 1}: {label} {rate:8.0f} messages/s")


if __name__ == "__main__":
    main()
