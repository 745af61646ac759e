"""The health endpoint reports the real scanners' state."""

from __future__ import annotations

import socket

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.maildir import MaildirStore
from web.app import create_app


def health(settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore) -> dict:
    app = create_app(settings, session_factory=session_factory, store=store)
    with TestClient(app) as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    return dict(response.json())


def test_health_reports_both_scanners_up(
    scan_settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    body = health(scan_settings, session_factory, store)
    assert body == {"status": "ok", "database": "ok", "scanners": {"rspamd": "up", "clamd": "up"}}


def test_health_reports_a_scanner_down_as_degraded(
    scan_settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    settings = scan_settings.model_copy(update={"scan_clamd_address": f"127.0.0.1:{closed}"})
    body = health(settings, session_factory, store)
    assert body["status"] == "degraded"
    assert body["scanners"] == {"rspamd": "up", "clamd": "down"}
