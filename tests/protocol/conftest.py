"""Protocol-test fixtures. SMTP fixtures are prefixed ``smtp_`` (POP3 helpers live in
``pop3_*.py`` modules)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.maildir import MaildirStore
from tests.protocol.smtp_helpers import IngressThread, seed_world
from tests.protocol.submission_helpers import SubmissionThread

# Tests use a short greeting delay: long enough that a command sent right after connect is
# seen as an early talker, short enough to keep the table fast.
SMTP_TEST_GREET_DELAY = 0.05


@pytest.fixture
def smtp_world(session_factory: sessionmaker[Session], store: MaildirStore) -> None:
    seed_world(session_factory, store)


@pytest.fixture
def smtp_start(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> Iterator[Callable[..., IngressThread]]:
    """Start an ingress with settings overrides: ``smtp_start(smtp_max_recipients=2)``."""
    started: list[IngressThread] = []

    def start(settings_: Settings | None = None, **overrides: Any) -> IngressThread:
        kw = {"greet_delay": overrides.pop("greet_delay", SMTP_TEST_GREET_DELAY)}
        if "stop_grace" in overrides:
            kw["stop_grace"] = overrides.pop("stop_grace")
        base = settings_ or settings
        running = IngressThread(base.model_copy(update=overrides), session_factory, store, **kw)
        started.append(running.start())
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def smtp_server(smtp_world: None, smtp_start: Callable[..., IngressThread]) -> IngressThread:
    return smtp_start()


@pytest.fixture
def submission_settings(tls_settings: Settings, tmp_path: Path) -> Settings:
    """TLS configured, both submission ports 0, a spool in the test's temp dir."""
    return tls_settings.model_copy(
        update={"submission_port": 0, "submissions_port": 0, "spool_root": tmp_path / "spool"}
    )


@pytest.fixture
def submission_start(
    submission_settings: Settings,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
) -> Iterator[Callable[..., SubmissionThread]]:
    """Start a submission server with settings overrides (``login_address_budget=2``)."""
    started: list[SubmissionThread] = []

    def start(**overrides: Any) -> SubmissionThread:
        running = SubmissionThread(
            submission_settings.model_copy(update=overrides), session_factory, store
        )
        started.append(running.start())
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def submission(
    smtp_world: None, submission_start: Callable[..., SubmissionThread]
) -> SubmissionThread:
    return submission_start()
