"""Scanner fixtures: one private rspamd and one private clamd per test session, a DNS server
of their own, and an ingress with scanning on (tests/scanners.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.maildir import MaildirStore
from tests.conftest import in_ci
from tests.dnsserver import TestDNSServer
from tests.protocol.smtp_helpers import IngressThread, seed_world
from tests.scanners import Clamd, Rspamd, ScannerMissing, cache_dir


def _missing(exc: ScannerMissing) -> None:
    if in_ci():
        pytest.fail(f"{exc} (CI=true: a missing scanner is a failure)")
    pytest.skip(str(exc))


@pytest.fixture(scope="session")
def scan_dns() -> Iterator[TestDNSServer]:
    server = TestDNSServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def rspamd(tmp_path_factory: pytest.TempPathFactory, scan_dns: TestDNSServer) -> Iterator[Rspamd]:
    try:
        daemon = Rspamd(
            tmp_path_factory.mktemp("rspamd"), dns_port=scan_dns.port, cache_dir=cache_dir()
        )
    except ScannerMissing as exc:
        _missing(exc)
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    try:
        daemon = Clamd(tmp_path_factory.mktemp("clamd"))
    except ScannerMissing as exc:
        _missing(exc)
    yield daemon
    daemon.stop()


@pytest.fixture
def scan_settings(settings: Settings, rspamd: Rspamd, clamd: Clamd) -> Settings:
    return settings.model_copy(
        update={
            "scan_rspamd_address": rspamd.address,
            "scan_clamd_address": clamd.address,
            "scan_timeout": 10.0,
            "authserv_id": "mx.mailhost.test",
            "smtp_greet_delay": 0.0,
        }
    )


@pytest.fixture
def scan_start(
    scan_settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> Iterator[Callable[..., IngressThread]]:
    """Seed the standard hosted addresses and start an ingress with scanning on; keyword
    arguments override settings."""
    seed_world(session_factory, store)
    started: list[IngressThread] = []

    def start(**overrides: Any) -> IngressThread:
        running = IngressThread(
            scan_settings.model_copy(update=overrides), session_factory, store, greet_delay=0.0
        )
        started.append(running.start())
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
def scan_ingress(scan_start: Callable[..., IngressThread]) -> IngressThread:
    return scan_start()


@pytest.fixture
def maildir_root(store: MaildirStore) -> Path:
    return Path(store.root)
