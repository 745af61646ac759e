"""Faults: SIGKILL of a real ``python -m smtp_submission`` process in the middle of DATA (nothing
queued, nothing delivered, also after a restart) and right after its 250 (the message is
delivered after the restart: the queue rows and spool file were durable before the 250)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.maildir import MaildirStore
from app.models import OutboundMessage, utcnow
from app.readiness import parse_ready_line
from tests.dnsserver import TestDNSServer
from tests.protocol.outbound_helpers import Clock, Sink, free_port, make_agent, run_once
from tests.protocol.smtp_helpers import ADDRESSES, REPO, new_messages
from tests.protocol.submission_helpers import message, starttls_client

USER, OTHER = ADDRESSES["user"], ADDRESSES["other"]


class SubmissionProcess:
    """``python -m smtp_submission`` configured through the environment."""

    def __init__(self, settings: Settings, cwd: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOST_")}
        env.update(
            PYTHONPATH=str(REPO),
            MAILHOST_DATABASE_URL=settings.database_url,
            MAILHOST_MAILDIR_ROOT=str(settings.maildir_root),
            MAILHOST_SPOOL_ROOT=str(settings.spool_root),
            MAILHOST_HOSTNAME=settings.hostname,
            MAILHOST_TLS_CERT_FILE=str(settings.tls_cert_file),
            MAILHOST_TLS_KEY_FILE=str(settings.tls_key_file),
            MAILHOST_SUBMISSION_PORT="0",
            MAILHOST_SUBMISSIONS_PORT="0",
            MAILHOST_LOG_LEVEL="WARNING",
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smtp_submission"],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        ready = parse_ready_line(line)
        if ready is None or ready.service != "submission":
            self.proc.kill()
            raise RuntimeError(f"submission did not start: {line!r}")
        self.port = ready.port("submission")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


@pytest.fixture
def processes() -> Iterator[list[SubmissionProcess]]:
    started: list[SubmissionProcess] = []
    yield started
    for process in started:
        process.stop()


def _queued(factory: sessionmaker[Session]) -> list[OutboundMessage]:
    with factory() as s:
        return list(s.scalars(select(OutboundMessage)).all())


def test_sigkill_mid_data_keeps_nothing(
    smtp_world: None,
    submission_settings: Settings,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    tls_files: tuple[Path, Path],
    tmp_path: Path,
    processes: list[SubmissionProcess],
) -> None:
    first = SubmissionProcess(submission_settings, tmp_path)
    processes.append(first)
    client = starttls_client(first.port, tls_files[0], login=USER)
    assert client.docmd(f"MAIL FROM:<{USER}>")[0] == 250
    assert client.docmd(f"RCPT TO:<{OTHER}>")[0] == 250
    assert client.docmd("RCPT TO:<bob@remote.example>")[0] == 250
    assert client.docmd("DATA")[0] == 354
    client.send(message(USER, OTHER, subject="half")[:40])  # no end of data yet
    first.kill()
    client.close()
    second = SubmissionProcess(submission_settings, tmp_path)
    processes.append(second)
    assert new_messages(store, OTHER) == []
    assert _queued(session_factory) == []
    spool = submission_settings.spool_root
    assert not spool.exists() or [p for p in spool.rglob("*") if p.is_file()] == []


def test_sigkill_right_after_250_delivers_after_restart(
    smtp_world: None,
    submission_settings: Settings,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    tls_files: tuple[Path, Path],
    tmp_path: Path,
    dns_server: TestDNSServer,
    processes: list[SubmissionProcess],
) -> None:
    sink_port = free_port()
    sink = Sink("127.0.0.2", sink_port).start()
    try:
        dns_server.zone.mx("remote.example", (10, "mx.remote.example"))
        dns_server.zone.a("mx.remote.example", "127.0.0.2")
        first = SubmissionProcess(submission_settings, tmp_path)
        processes.append(first)
        client = starttls_client(first.port, tls_files[0], login=USER)
        client.sendmail(USER, [OTHER, "bob@remote.example"], message(USER, OTHER, "kept"))
        first.kill()  # at once after the 250: no clean shutdown
        client.close()
        second = SubmissionProcess(submission_settings, tmp_path)
        processes.append(second)
        [copy] = new_messages(store, OTHER)
        assert b"Subject: kept" in copy
        [queued] = _queued(session_factory)
        agent_settings = submission_settings.model_copy(
            update={
                "delivery_port": sink_port,
                "delivery_nameservers": ("127.0.0.1",),
                "delivery_dns_port": dns_server.port,
                "delivery_dns_timeout": 5.0,
            }
        )
        agent = make_agent(agent_settings, session_factory, store, Clock(utcnow()))
        assert run_once(agent) == 1
        [got] = sink.received
        assert got.recipients == ["bob@remote.example"] and b"Subject: kept" in got.data
    finally:
        sink.stop()
