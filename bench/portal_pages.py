"""Benchmark: portal list, search and dashboard pages with 100,000 mailboxes in 10,000 domains.

Seeds through SQLAlchemy core (bulk inserts), serves the real app with uvicorn on port 0 and
times the pages over HTTP with a logged-in client. Prints figures; asserts nothing.

    .venv/bin/python bench/portal_pages.py                       # temp SQLite file
    .venv/bin/python bench/portal_pages.py --database-url postgresql://postgres@127.0.0.1/mh_bench

The PostgreSQL database given is WIPED (tables dropped and recreated): use a throwaway one.
"""

from __future__ import annotations

import argparse
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from sqlalchemy import insert, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import app.models  # noqa: E402,F401
from app.config import Settings  # noqa: E402
from app.db import Base, make_engine, make_session_factory, transaction  # noqa: E402
from app.maildir import MaildirStore  # noqa: E402
from app.models import Customer, Domain, Mailbox, utcnow  # noqa: E402
from app.passwords import hash_password  # noqa: E402
from app.services import accounts  # noqa: E402
from app.services.audit import CLI_ACTOR  # noqa: E402
from web.app import create_app  # noqa: E402

BATCH = 10_000


def seed(factory, *, mailboxes: int, domains: int) -> None:
    customers = max(1, domains // 10)
    per_domain = mailboxes // domains
    pw_hash = hash_password("benchmark password")
    now = utcnow()
    with transaction(factory) as session:
        session.execute(
            insert(Customer),
            [{"name": f"customer {c:05d}", "created_at": now} for c in range(customers)],
        )
        customer_ids = list(session.scalars(select(Customer.id).order_by(Customer.id)))
        session.execute(
            insert(Domain),
            [
                {
                    "name": f"dom{d:05d}.example",
                    "customer_id": customer_ids[d % customers],
                    "default_quota_bytes": 1024**3,
                    "created_at": now,
                }
                for d in range(domains)
            ],
        )
        domain_ids = list(session.scalars(select(Domain.id).order_by(Domain.id)))
        rows = []
        for d, domain_id in enumerate(domain_ids):
            for u in range(per_domain):
                rows.append(
                    {
                        "domain_id": domain_id,
                        "local_part": f"user{d * per_domain + u:06d}",
                        "password_hash": pw_hash,
                        "quota_bytes": 1024**3,
                        "created_at": now,
                    }
                )
                if len(rows) >= BATCH:
                    session.execute(insert(Mailbox), rows)
                    rows = []
        if rows:
            session.execute(insert(Mailbox), rows)
        accounts.create_operator(
            session, actor=CLI_ACTOR, username="bench", password="benchmark password"
        )


def serve(app) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def login(client: httpx.Client) -> None:
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = client.post(
        "/login",
        data={"username": "bench", "password": "benchmark password", "csrf_token": token},
    )
    assert r.status_code == 303, r.text


def time_page(client: httpx.Client, url: str, repeat: int) -> tuple[float, float, float]:
    client.get(url)  # warm-up (template compile, caches)
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        response = client.get(url)
        samples.append((time.perf_counter() - start) * 1000)
        if response.status_code != 200:
            raise SystemExit(f"{url}: HTTP {response.status_code}")
    samples.sort()
    p95 = samples[min(len(samples) - 1, int(len(samples) * 0.95))]
    return statistics.median(samples), p95, samples[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url")
    parser.add_argument("--mailboxes", type=int, default=100_000)
    parser.add_argument("--domains", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mh-bench-"))
    url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    settings = Settings(database_url=url, maildir_root=tmp / "mail", _env_file=None)  # type: ignore[call-arg]
    engine = make_engine(settings)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    factory = make_session_factory(engine)

    start = time.perf_counter()
    seed(factory, mailboxes=args.mailboxes, domains=args.domains)
    print(f"database: {engine.dialect.name}")
    print(
        f"seeded {args.mailboxes} mailboxes in {args.domains} domains "
        f"in {time.perf_counter() - start:.1f}s"
    )

    store = MaildirStore(settings.maildir_root, hostname="bench", fsync=False)
    app = create_app(settings, session_factory=factory, store=store)
    server, thread, base = serve(app)
    with factory() as session:
        mid_id = session.scalar(
            select(Mailbox.id).order_by(Mailbox.id).offset(args.mailboxes // 2).limit(1)
        )
        domain_id = session.scalar(
            select(Domain.id).order_by(Domain.id).offset(args.domains // 2).limit(1)
        )
    pages = [
        ("dashboard", "/"),
        ("mailboxes, first page", "/mailboxes"),
        ("mailboxes, page in the middle", f"/mailboxes?after={mid_id}"),
        ("mailboxes, one domain", f"/mailboxes?domain={domain_id}"),
        ("mailboxes, search 'user0500'", "/mailboxes?q=user0500"),
        ("mailboxes, search no match", "/mailboxes?q=nobody-here"),
        ("domains, first page", "/domains"),
        ("domains, search 'dom0999'", "/domains?q=dom0999"),
        ("customers, first page", "/customers"),
        ("mailbox detail", f"/mailboxes/{mid_id}"),
    ]
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            login(client)
            start = time.perf_counter()
            client.get("/")
            print(
                f"dashboard, very first view (starts background usage scan): "
                f"{(time.perf_counter() - start) * 1000:.1f} ms"
            )
            print(f"{'page':40} {'median ms':>10} {'p95 ms':>10} {'max ms':>10}")
            for name, path in pages:
                median, p95, worst = time_page(client, path, args.repeat)
                print(f"{name:40} {median:10.1f} {p95:10.1f} {worst:10.1f}")
            scan_start = time.perf_counter()
            app.state.usage_cache.refresh_now()
            print(
                f"full storage scan of {args.mailboxes} (empty) Maildirs, done off the request "
                f"path: {time.perf_counter() - scan_start:.1f}s"
            )
            # The dashboard rows above overlap the background scan (2 threads, one GIL);
            # with fresh totals cached it is only the count queries.
            median, p95, worst = time_page(client, "/", args.repeat)
            print(
                f"{'dashboard, totals cached, no scan':40} {median:10.1f} {p95:10.1f} {worst:10.1f}"
            )
    finally:
        server.should_exit = True
        thread.join(10)
        engine.dispose()


if __name__ == "__main__":
    main()
