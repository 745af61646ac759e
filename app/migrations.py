"""Programmatic Alembic: bring a database to the newest schema (``mailhost db upgrade``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from app.db import normalise_database_url

# The repository root holds alembic.ini and alembic/; locate them from this file, not the
# current directory, so `mailhost db upgrade` works wherever it is run.
REPO_ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = REPO_ROOT / "alembic.ini"
SCRIPT_LOCATION = REPO_ROOT / "alembic"


def alembic_config(database_url: str) -> Config:
    """An Alembic Config for ``database_url`` with absolute paths, leaving logging alone."""
    if not SCRIPT_LOCATION.is_dir():
        raise RuntimeError(
            f"Alembic scripts not found at {SCRIPT_LOCATION}; run Mailhost from a checkout "
            "(pip install -e .)"
        )
    config = Config(str(ALEMBIC_INI)) if ALEMBIC_INI.is_file() else Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    # ConfigParser interpolation: a literal '%' in the URL (an escaped password) must be doubled.
    config.set_main_option(
        "sqlalchemy.url", normalise_database_url(database_url).replace("%", "%%")
    )
    config.attributes["configure_logger"] = False
    return config


def upgrade_to_head(database_url: str) -> None:
    """``alembic upgrade head`` on ``database_url`` (safe to run from several processes)."""
    command.upgrade(alembic_config(database_url), "head")


def downgrade_to_base(database_url: str) -> None:
    """``alembic downgrade base``: drops every table (used by tests and by hand)."""
    command.downgrade(alembic_config(database_url), "base")


def current_revision(database_url: str) -> str | None:
    """The revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    engine = create_engine(normalise_database_url(database_url), poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
