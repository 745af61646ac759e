"""Alembic: upgrade head from empty on SQLite and PostgreSQL, no drift, downgrade to base."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

import app.models  # noqa: F401
from app.db import Base, normalise_database_url
from app.migrations import REPO_ROOT, current_revision, downgrade_to_base, upgrade_to_head
from tests.conftest import in_ci, pg_url

EXPECTED_TABLES = {t.name for t in Base.metadata.sorted_tables}


def _drift(url: str) -> list[object]:
    engine = create_engine(normalise_database_url(url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(normalise_database_url(url), poolclass=NullPool)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _check_round_trip(url: str) -> None:
    assert current_revision(url) is None
    upgrade_to_head(url)
    assert _tables(url) == EXPECTED_TABLES
    assert current_revision(url) == "0002"
    assert _drift(url) == []
    # Running it again is a no-op (serve runs it on every start).
    upgrade_to_head(url)
    downgrade_to_base(url)
    assert _tables(url) == set()
    assert current_revision(url) is None


def test_sqlite_upgrade_head_no_drift_and_downgrade(tmp_path: Path) -> None:
    _check_round_trip(f"sqlite:///{tmp_path / 'fresh.db'}")


@pytest.fixture
def fresh_pg_database() -> Iterator[str]:
    """A new, empty PostgreSQL database made from the server URL; dropped afterwards."""
    base = pg_url()
    if base is None:
        if in_ci():
            pytest.fail("CI needs MAILHOST_TEST_DATABASE_URL to test migrations on PostgreSQL")
        pytest.skip("MAILHOST_TEST_DATABASE_URL not set")
    server = make_url(normalise_database_url(base))
    name = f"mh_migr_{secrets.token_hex(6)}"
    admin = create_engine(
        server.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.postgres
def test_postgresql_upgrade_head_no_drift_and_downgrade(fresh_pg_database: str) -> None:
    _check_round_trip(fresh_pg_database)


def test_drift_detection_is_real(tmp_path: Path) -> None:
    """The drift check sees a missing table (so an empty diff above means something)."""
    url = f"sqlite:///{tmp_path / 'partial.db'}"
    upgrade_to_head(url)
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE daily_stats"))
    engine.dispose()
    diffs = _drift(url)
    assert [d[0] for d in diffs if isinstance(d, tuple)] == ["add_table"]


def test_alembic_cli_from_another_directory_uses_settings_url(tmp_path: Path) -> None:
    """`alembic -c <repo>/alembic.ini upgrade head` run elsewhere takes MAILHOST_DATABASE_URL."""
    db = tmp_path / "cli.db"
    env = {**os.environ, "MAILHOST_DATABASE_URL": f"sqlite:///{db}"}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(REPO_ROOT / "alembic.ini"), "upgrade", "head"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert current_revision(f"sqlite:///{db}") == "0002"
    assert _tables(f"sqlite:///{db}") == EXPECTED_TABLES


def test_migrated_database_serves_the_services(tmp_path: Path) -> None:
    """Services work on a migrated (not create_all) schema, and re-running keeps the data."""
    from app.config import Settings
    from app.db import make_engine, make_session_factory, transaction
    from app.services.resolution import resolve_recipient
    from tests.factories import make_mailbox

    url = f"sqlite:///{tmp_path / 'served.db'}"
    upgrade_to_head(url)
    engine = make_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    try:
        factory = make_session_factory(engine)
        with transaction(factory) as session:
            make_mailbox(session, "user@hosted.example")
        upgrade_to_head(url)
        with factory() as session:
            assert resolve_recipient(session, address="user@hosted.example").ok
            # The application's connections still enforce foreign keys after a migration.
            assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        engine.dispose()
