"""A real database outage while the portal runs: HTML 503 pages with Retry-After, no traceback.

The outage is real, never a mock: on SQLite the database file's directory is replaced by a
plain file (every open of the database fails), on PostgreSQL the test's own database stops
accepting connections and the app's open connections are terminated by the server. Both are
undone afterwards and the same pages work again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from app.config import Settings
from app.db import Base, make_engine, make_session_factory, transaction
from app.maildir import MaildirStore
from tests.factories import make_customer
from tests.web.api_helpers import PROBLEM, ServerThread, make_token
from tests.web.portal_helpers import PortalClient, add_operator, csrf_from
from web.app import create_app

# What must never reach a browser, whatever the failure.
LEAKS = ("Traceback", "sqlalchemy", "sqlite3", "psycopg", "OperationalError", 'File "')


@dataclass
class Outage:
    factory: sessionmaker[Session]
    settings: Settings
    cut: Callable[[], None]
    restore: Callable[[], None]


def _sqlite_outage(settings: Settings, tmp_path: Path) -> Iterator[Outage]:
    folder = tmp_path / "db"
    away = tmp_path / "db.away"
    url = f"sqlite:///{folder / 'mailhost.db'}"
    own = settings.model_copy(update={"database_url": url})
    # NullPool: every request opens the file, as a restarted process would; a pooled
    # connection would keep the unlinked file open and hide the outage.
    engine = make_engine(own, poolclass=NullPool)
    Base.metadata.create_all(engine)

    def cut() -> None:
        folder.rename(away)
        folder.write_text("not a directory\n")  # opening db/mailhost.db now fails (ENOTDIR)

    def restore() -> None:
        folder.unlink()
        away.rename(folder)

    yield Outage(make_session_factory(engine), own, cut, restore)
    engine.dispose()


def _postgres_outage(settings: Settings) -> Iterator[Outage]:
    server = make_url(settings.database_url)
    name = f"mh_outage_{uuid.uuid4().hex[:12]}"
    admin_dsn = server.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    own = settings.model_copy(
        update={"database_url": server.set(database=name).render_as_string(hide_password=False)}
    )
    engine = make_engine(own)
    Base.metadata.create_all(engine)

    def cut() -> None:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )

    def restore() -> None:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    try:
        yield Outage(make_session_factory(engine), own, cut, restore)
    finally:
        engine.dispose()
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def outage(settings: Settings, tmp_path: Path) -> Iterator[Outage]:
    if make_url(settings.database_url).get_backend_name() == "postgresql":
        yield from _postgres_outage(settings)
    else:
        yield from _sqlite_outage(settings, tmp_path)


def _assert_unavailable_page(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "Temporarily unavailable" in page
    assert "cannot reach its database" in page
    assert '<link rel="stylesheet" href="/static/portal.css">' in page
    for leak in LEAKS:
        assert leak not in page, (leak, page)


def test_portal_answers_an_html_503_during_a_database_outage_and_recovers(
    outage: Outage, store: MaildirStore
) -> None:
    add_operator(outage.factory, "alice", "admin")
    with transaction(outage.factory) as session:
        customer_id = make_customer(session, "Acme").id
    token = make_token(outage.factory, "read")
    app = create_app(outage.settings, session_factory=outage.factory, store=store)
    with ServerThread(app) as server, httpx.Client(base_url=server.url) as http:
        portal = PortalClient(http)  # type: ignore[arg-type]  # any httpx.Client will do
        assert portal.login("alice").status_code == 303
        pages = ["/", "/customers", f"/customers/{customer_id}", "/mailboxes?q=x"]
        for url in pages:
            assert portal.get(url).status_code == 200, url

        outage.cut()
        try:
            for url in pages:
                _assert_unavailable_page(portal.get(url))
            # A change that cannot be saved: the same page, and nothing half-written.
            _assert_unavailable_page(
                portal.post("/customers/new", {"name": "Lost", "currency": "EUR"})
            )
            # Logging in needs the database too (throttle and password check).
            anonymous = httpx.Client(base_url=server.url)
            with anonymous:
                form = anonymous.get("/login")
                assert form.status_code == 200  # the login form itself needs no database
                login = {"username": "alice", "password": "x", "csrf_token": csrf_from(form.text)}
                _assert_unavailable_page(anonymous.post("/login", data=login))
            # The API and the health check keep their JSON 503s.
            api = http.get("/api/v1/customers", headers={"Authorization": f"Bearer {token}"})
            assert api.status_code == 503, api.text
            assert api.headers["content-type"].startswith(PROBLEM)
            assert api.headers["retry-after"] == "5"
            health = http.get("/healthz")
            assert health.status_code == 503
            assert health.json()["database"] == "unreachable"
        finally:
            outage.restore()

        for url in pages:
            assert portal.get(url).status_code == 200, url
        listing = portal.get("/customers").text
        assert "Acme" in listing
        assert "Lost" not in listing
