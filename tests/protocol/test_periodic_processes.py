"""The periodic jobs without the portal (issue 14): a deployment of split services whose only
candidate is ``mailhost deliver`` still gets queue samples and the daily storage snapshot;
with two delivery agents exactly one runs them, and when it is killed the other takes over.
The agent is a service like the others: a ready line and a metrics listener. Real processes,
the real database (SQLite file lock or PostgreSQL advisory lock)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.models import CustomerStorageDaily, QueueSample
from app.readiness import Ready, parse_ready_line
from tests.factories import seed_mailbox

REPO = Path(__file__).resolve().parents[2]
RUNS_THEM = "periodic jobs: this process (pid {pid}) runs them"


class Agent:
    """``mailhost deliver`` in a process of its own, its log in a file."""

    def __init__(self, env: dict[str, str], cwd: Path, name: str) -> None:
        # One metrics directory per instance (README "Monitoring"), a listener on port 0.
        env = {**env, "MAILHOST_METRICS_DIR": str(cwd / name), "MAILHOST_METRICS_PORT": "0"}
        self.log = cwd / f"{name}.log"
        self._out = self.log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mailhost", "deliver"],
            cwd=cwd,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def runs_them(self) -> bool:
        return RUNS_THEM.format(pid=self.process.pid) in self.log.read_text()

    def ready(self) -> Ready | None:
        for line in self.log.read_text().splitlines():
            parsed = parse_ready_line(line)
            if parsed is not None:
                return parsed
        return None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(30)
        self._out.close()
        return code


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _samples(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(QueueSample)) or 0)


def _snapshot_today(factory: sessionmaker[Session]) -> bool:
    today = dt.datetime.now(dt.UTC).date()
    with factory() as session:
        return (
            session.scalar(
                select(func.count())
                .select_from(CustomerStorageDaily)
                .where(CustomerStorageDaily.day == today)
            )
            or 0
        ) > 0


@pytest.fixture
def start_agent(settings: Settings, tmp_path: Path) -> Iterator[Callable[[str], Agent]]:
    settings.maildir_root.mkdir(parents=True, exist_ok=True)  # the volume, as deployed
    env = {
        **os.environ,
        "MAILHOST_DATABASE_URL": settings.database_url,
        "MAILHOST_MAILDIR_ROOT": str(settings.maildir_root),
        "MAILHOST_SPOOL_ROOT": str(tmp_path / "spool"),
        "MAILHOST_HOSTNAME": "mx.test",
        "MAILHOST_QUEUE_SAMPLE_SECONDS": "1",  # a tick a second
        "MAILHOST_LOG_LEVEL": "INFO",
        "PYTHONPATH": str(REPO),
    }
    started: list[Agent] = []

    def start(name: str) -> Agent:
        agent = Agent(env, tmp_path, name)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop(signal.SIGKILL)


def test_delivery_agents_alone_run_the_periodic_jobs_one_at_a_time(
    settings: Settings,
    session_factory: sessionmaker[Session],
    start_agent: Callable[[str], Agent],
) -> None:
    seed_mailbox(session_factory, "user@hosted.example")
    first = start_agent("first")
    _wait(first.runs_them, "the first agent to take the periodic jobs")
    _wait(lambda: _samples(session_factory) >= 1, "a queue sample")
    _wait(lambda: _snapshot_today(session_factory), "today's storage snapshot")
    # A service like the others: the ready line, its metrics listener with the queue gauges.
    _wait(lambda: first.ready() is not None, "the ready line")
    ready = first.ready()
    assert ready is not None and ready.service == "delivery" and ready.pid == first.process.pid
    base = f"http://127.0.0.1:{ready.port('metrics')}"
    with urllib.request.urlopen(base + "/metrics", timeout=10) as scrape:
        exposition = scrape.read().decode()
    assert 'mailhost_queue_recipients{state="queued"} 0.0' in exposition
    assert "mailhost_worker_start_time_seconds" in exposition
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=10) as answer:
            assert answer.status == 200
    except urllib.error.HTTPError as refused:
        raise AssertionError(refused.read().decode()) from None

    second = start_agent("second")
    time.sleep(3)  # three of the second agent's ticks: it must not take the jobs
    assert second.process.poll() is None, second.log.read_text()
    assert not second.runs_them(), second.log.read_text()

    first.stop(signal.SIGKILL)  # no clean release: the lock goes with the process
    _wait(second.runs_them, "the second agent to take over")
    taken = _samples(session_factory)
    _wait(lambda: _samples(session_factory) > taken, "a sample by the second agent")
    assert second.stop() == 0
    assert "lost the lock" not in second.log.read_text()
