"""The portal's /metrics (bearer token), /livez and /readyz, through HTTP with a real database.

The exposition is parsed with prometheus-client's own parser: every family is named
``mailhost_...``, has the type the README documents, and no label that could take a value
per user (address, mailbox, domain)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr
from sqlalchemy.orm import Session, sessionmaker

from app import metrics
from app.config import Settings
from app.db import make_engine, make_session_factory, transaction
from app.maildir import MaildirStore
from app.models import OutboundMessage, OutboundRecipient
from web.app import create_app

TOKEN = "s3cret-scrape-token"

# name -> type, as documented in the README's Monitoring section.
EXPECTED_TYPES = {
    "mailhost_connections": "counter",
    "mailhost_connections_open": "gauge",
    "mailhost_messages_accepted": "counter",
    "mailhost_messages_refused": "counter",
    "mailhost_stored_bytes": "counter",
    "mailhost_store_duration_seconds": "histogram",
    "mailhost_delivery_latency_seconds": "histogram",
    "mailhost_delivery_attempts": "counter",
    "mailhost_pop3_logins": "counter",
    "mailhost_pop3_messages_retrieved": "counter",
    "mailhost_pop3_retrieved_bytes": "counter",
    "mailhost_login_throttled": "counter",
    "mailhost_scanner_verdicts": "counter",
    "mailhost_quota_warnings": "counter",
    "mailhost_worker_start_time_seconds": "gauge",
    "mailhost_queue_recipients": "gauge",
    "mailhost_queue_oldest_age_seconds": "gauge",
}
PER_USER_LABELS = {"address", "user", "username", "mailbox", "domain", "customer", "sender"}


def _client(settings: Settings, store: MaildirStore, **update: object) -> TestClient:
    configured = settings.model_copy(update=update)
    factory = make_session_factory(make_engine(configured))
    return TestClient(create_app(configured, session_factory=factory, store=store))


def _queue_two_recipients(factory: sessionmaker[Session], age: dt.timedelta) -> None:
    with transaction(factory) as session:
        message = OutboundMessage(
            queue_id="Q1",
            sender="a@hosted.example",
            spool_id="S1",
            size=10,
            origin="submission",
            created_at=dt.datetime.now(dt.UTC) - age,
        )
        message.recipients = [
            OutboundRecipient(address="x@remote.example"),
            OutboundRecipient(address="y@remote.example", state="deferred"),
        ]
        session.add(message)


def test_metrics_needs_the_token_and_is_off_without_one(
    settings: Settings, store: MaildirStore, engine: object
) -> None:
    with _client(settings, store) as client:
        assert client.get("/metrics").status_code == 404
    with _client(settings, store, metrics_token=SecretStr(TOKEN)) as client:
        assert client.get("/metrics").status_code == 401
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"].startswith("Bearer")
        ok = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert ok.headers["content-type"].startswith("text/plain; version=0.0.4")


def test_exposition_names_types_labels_and_queue_figures(
    settings: Settings,
    store: MaildirStore,
    session_factory: sessionmaker[Session],
) -> None:
    _queue_two_recipients(session_factory, dt.timedelta(hours=2))
    # Touch every labelled instrument once so its family has samples.
    metrics.connection_opened("smtp")
    metrics.refused("smtp", "rcpt", "550 5.1.1 no such user")
    metrics.message_accepted("smtp", copies=2, size=100, seconds=0.01)
    metrics.delivery_outcome("delivered", queued_at=dt.datetime.now(dt.UTC), final=True)
    metrics.pop3_login("ok")
    metrics.pop3_retrieved(100)
    metrics.login_throttled("pop3", "address")
    metrics.scanner_verdict("rspamd", "spam")
    metrics.quota_warning(80)
    metrics.worker_started()
    with _client(settings, store, metrics_token=SecretStr(TOKEN)) as client:
        text = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in EXPECTED_TYPES.items():
        assert name in families, name
        assert families[name].type == kind, name
    for family in families.values():
        assert family.name.startswith("mailhost_"), family.name
        for sample in family.samples:
            assert not PER_USER_LABELS & set(sample.labels), sample
    refused = families["mailhost_messages_refused"].samples
    assert any(
        s.labels == {"service": "smtp", "stage": "rcpt", "reply_class": "5xx"} and s.value >= 1
        for s in refused
    )
    depth = {s.labels["state"]: s.value for s in families["mailhost_queue_recipients"].samples}
    assert depth == {"queued": 1, "deferred": 1, "held": 0}
    (age,) = families["mailhost_queue_oldest_age_seconds"].samples
    assert 7100 < age.value < 7400


def test_readyz_says_what_is_wrong(settings: Settings, store: MaildirStore, engine: object) -> None:
    with _client(settings, store) as client:
        assert client.get("/livez").json() == {"status": "ok"}
        settings.maildir_root.mkdir(parents=True, exist_ok=True)
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json() == {
            "status": "ok",
            "checks": {"database": {"ok": True}, "maildir": {"ok": True}},
        }


def test_readyz_fails_when_the_database_is_gone(settings: Settings, store: MaildirStore) -> None:
    with _client(settings, store, database_url="postgresql://postgres@127.0.0.1:1/x") as client:
        assert client.get("/livez").status_code == 200  # alive: a restart would not help
        ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "error"
    assert body["checks"]["database"]["ok"] is False
    assert body["checks"]["database"]["error"].startswith("unreachable: ")


def test_readyz_fails_when_the_maildir_volume_is_not_writable(
    settings: Settings, tmp_path: Path, engine: object
) -> None:
    # Root ignores permission bits, so a volume that is not there (an unmounted volume
    # leaves a plain file or nothing) and a read-only remount are what can be shown here:
    # /proc is mounted read-only for writes of new files on every Linux.
    missing = MaildirStore(tmp_path / "not-mounted")
    with _client(settings, missing) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    check = ready.json()["checks"]["maildir"]
    assert check["ok"] is False and "does not exist" in check["error"]
    with _client(settings, MaildirStore(Path("/proc"))) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    check = ready.json()["checks"]["maildir"]
    assert check["ok"] is False and "is not writable" in check["error"]
