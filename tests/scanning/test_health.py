"""The health and readiness endpoints report the real scanners' state."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.health import scanner_checks
from app.maildir import MaildirStore
from mailhost.metrics_server import MetricsServer
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


def test_readyz_checks_each_configured_scanner_on_the_portal_and_the_metrics_listener(
    scan_settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    # README "Monitoring": /readyz checks the database, the Maildir volume and each
    # configured scanner, and answers 503 naming what is wrong.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    down = scan_settings.model_copy(update={"scan_clamd_address": f"127.0.0.1:{closed}"})
    for settings, status in ((scan_settings, 200), (down, 503)):
        app = create_app(settings, session_factory=session_factory, store=store)
        with TestClient(app) as client:
            response = client.get("/readyz")
        assert response.status_code == status, response.text
        checks = response.json()["checks"]
        assert checks["rspamd"] == {"ok": True}
        assert checks["clamd"]["ok"] is (status == 200)
        listener = MetricsServer(
            "127.0.0.1",
            0,
            session_factory=session_factory,
            maildir_root=store.root,
            queue=False,
            scanners=scanner_checks(settings),
        )
        listener.start()
        try:
            url = f"http://127.0.0.1:{listener.port}/readyz"
            try:
                with urllib.request.urlopen(url, timeout=30) as answer:
                    code, body = answer.status, json.load(answer)
            except urllib.error.HTTPError as refused:
                code, body = refused.code, json.load(refused)
        finally:
            listener.stop()
        assert code == status, body
        assert body["checks"]["clamd"]["ok"] is (status == 200)
    assert f"127.0.0.1:{closed}" in checks["clamd"]["error"]


def test_readyz_has_no_scanner_checks_with_scanning_off(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    assert scanner_checks(settings) == []
    app = create_app(settings, session_factory=session_factory, store=store)
    with TestClient(app) as client:
        response = client.get("/readyz")
    assert response.status_code == 200
    assert set(response.json()["checks"]) == {"database", "maildir"}
