"""Shared fixtures: a real database (a SQLite file, or PostgreSQL when a URL is given), a
Maildir root in a temp dir, and settings pointing at both.

Set ``MAILHOST_TEST_DATABASE_URL`` to run the whole suite against PostgreSQL (``.ci/run`` does,
with a fresh database per run). Tables are created once per run there and truncated between
tests; on SQLite each test gets its own database file.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

import app.models  # noqa: F401  (registers every table on Base.metadata)
from app.config import Settings
from app.db import Base, make_engine, make_session_factory
from app.maildir import MaildirStore
from tests.dnsserver import TestDNSServer

PG_URL_ENV = "MAILHOST_TEST_DATABASE_URL"
# MAILHOST_TEST_EVENT_LOOP=uvloop: every loop the tests make (asyncio.new_event_loop in the
# server threads) is a uvloop one, to run the suite on the loop production uses by default.
if os.environ.get("MAILHOST_TEST_EVENT_LOOP") == "uvloop":
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def pg_url() -> str | None:
    return os.environ.get(PG_URL_ENV) or None


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_postgres(engine: Engine) -> None:
    """For a test of PostgreSQL behaviour (row locks, SKIP LOCKED): fail under CI without
    PostgreSQL, skip elsewhere."""
    if engine.dialect.name != "postgresql":
        if in_ci():
            pytest.fail("CI needs MAILHOST_TEST_DATABASE_URL for this PostgreSQL test")
        pytest.skip("needs PostgreSQL (MAILHOST_TEST_DATABASE_URL)")


@pytest.fixture(scope="session")
def _pg_schema() -> Iterator[str | None]:
    url = pg_url()
    if url is None:
        yield None
        return
    engine = make_engine(Settings(database_url=url))
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    engine.dispose()
    yield url


@pytest.fixture
def settings(tmp_path: Path, _pg_schema: str | None) -> Settings:
    """Settings for one test: its own Maildir root and database, every port 0."""
    database_url = _pg_schema or f"sqlite:///{tmp_path / 'mailhost.db'}"
    return Settings(
        database_url=database_url,
        maildir_root=tmp_path / "mail",
        hostname="mx.test.example",
        smtp_port=0,
        pop3_port=0,
        web_port=0,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings)
    if engine.dialect.name == "postgresql":
        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    else:
        Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session for service tests; the test commits what it wants to keep."""
    with session_factory() as s:
        yield s
        s.rollback()


@pytest.fixture
def store(settings: Settings) -> MaildirStore:
    return MaildirStore(settings.maildir_root, hostname=settings.hostname)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate and key for 127.0.0.1 / mx.test.example, made per run."""
    from app.tls import generate_self_signed

    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    generate_self_signed(cert, key, hostname="mx.test.example")
    return cert, key


@pytest.fixture
def tls_settings(settings: Settings, tls_files: tuple[Path, Path]) -> Settings:
    """``settings`` with the test certificate configured (enables STARTTLS / STLS / POP3S)."""
    return settings.model_copy(update={"tls_cert_file": tls_files[0], "tls_key_file": tls_files[1]})


@pytest.fixture
def dns_server() -> Iterator[TestDNSServer]:
    """A real DNS server on 127.0.0.1 (UDP and TCP, port picked by the OS) with an empty zone."""
    server = TestDNSServer().start()
    try:
        yield server
    finally:
        server.stop()
