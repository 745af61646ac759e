"""Metrics across prefork workers, through the real CLI: ``mailhost smtp --workers 2`` with
a metrics port. Counters are the sum over both workers; a worker killed with SIGKILL loses
its live gauge series (its counts stay); the exposition parses and has the documented types."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.readiness import Ready, parse_ready_line
from tests.factories import seed_mailbox

TIMEOUT = 60.0
REPO = Path(__file__).resolve().parents[2]


def _wait_for(predicate: Callable[[], bool], what: str, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; log:\n{log.read_text()}")
        time.sleep(0.05)


def _scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name -> labels -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def _send(port: int, n: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        for i in range(n):
            client.sendmail("a@remote.example", ["user@hosted.example"], f"Subject: {i}\n\nhi\n")


def test_counters_are_summed_over_workers_and_dead_workers_lose_their_gauges(
    settings: Settings, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    seed_mailbox(session_factory, "user@hosted.example")
    settings.maildir_root.mkdir(parents=True, exist_ok=True)
    metrics_dir = tmp_path / "metrics"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOST_")}
    env.update(
        PYTHONPATH=str(REPO),
        MAILHOST_DATABASE_URL=settings.database_url,
        MAILHOST_MAILDIR_ROOT=str(settings.maildir_root),
        MAILHOST_HOSTNAME="mx.test.example",
        MAILHOST_SMTP_PORT="0",
        MAILHOST_SMTP_GREET_DELAY="0",
        MAILHOST_METRICS_PORT="0",
        MAILHOST_METRICS_DIR=str(metrics_dir),
        MAILHOST_LOG_LEVEL="INFO",
    )
    # A stale file of an earlier run is removed at start (it would be added in).
    (metrics_dir / "smtp").mkdir(parents=True)
    (metrics_dir / "smtp" / "counter_999999.db").write_bytes(b"stale")
    log = tmp_path / "smtp.err"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailhost", "smtp", "--workers", "2"],
            env=env,
            cwd=tmp_path,
            stderr=err,
        )

    def ready(service: str) -> list[Ready]:
        lines = [parse_ready_line(line) for line in log.read_text().splitlines()]
        return [r for r in lines if r is not None and r.service == service]

    try:
        _wait_for(lambda: len(ready("smtp")) >= 2 and len(ready("metrics")) == 1, "ready", log)
        smtp_port = ready("smtp")[0].port("smtp")
        metrics_port = ready("metrics")[0].port("metrics")
        workers = {r.pid for r in ready("smtp")}
        assert not (metrics_dir / "smtp" / "counter_999999.db").exists()
        url = f"http://127.0.0.1:{metrics_port}/readyz"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert json.load(response) == {
                "status": "ok",
                "checks": {"database": {"ok": True}, "maildir": {"ok": True}},
            }

        # SO_REUSEPORT spreads connections by their addresses: send until both workers
        # have counted something (each worker writes files named after its pid).
        sent = 0

        def both_counted() -> bool:
            nonlocal sent
            _send(smtp_port, 2)
            sent += 2
            return all((metrics_dir / "smtp" / f"counter_{pid}.db").exists() for pid in workers)

        _wait_for(both_counted, "both workers to accept mail", log)
        samples = _scrape(metrics_port)
        accepted = samples["mailhost_messages_accepted_total"][(("service", "smtp"),)]
        assert accepted == sent
        assert samples["mailhost_stored_bytes_total"][(("service", "smtp"),)] > 0
        assert samples["mailhost_store_duration_seconds_count"][(("service", "smtp"),)] == sent
        live = {dict(k)["pid"] for k in samples["mailhost_worker_start_time_seconds"]}
        assert live == {str(pid) for pid in workers}

        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)

        def victim_gone() -> bool:
            pids = {
                dict(k)["pid"] for k in _scrape(metrics_port)["mailhost_worker_start_time_seconds"]
            }
            return str(victim) not in pids and len(pids) == 2  # its replacement is there

        _wait_for(victim_gone, "the killed worker's gauge to go", log)
        # Its counts stay: they happened.
        after = _scrape(metrics_port)["mailhost_messages_accepted_total"]
        assert after[(("service", "smtp"),)] == sent
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
