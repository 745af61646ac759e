"""Servers really run on the loop MAILHOST_EVENT_LOOP names: ``python -m smtp_ingress`` with
``uvloop`` has uvloop's extension mapped and says so at start, with ``asyncio`` it has not;
either way it delivers mail."""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import Settings
from app.maildir import MaildirStore
from app.readiness import parse_ready_line
from tests.protocol.smtp_helpers import ADDRESSES, REPO, new_messages


def _mapped_uvloop(pid: int) -> bool:
    """Whether uvloop's compiled loop module is loaded in process ``pid``."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return any("uvloop" in line and "loop.cpython" in line for line in maps.splitlines())


@pytest.mark.parametrize("choice", ["uvloop", "asyncio"])
def test_ingress_process_runs_on_the_chosen_loop(
    choice: str, smtp_world: None, settings: Settings, store: MaildirStore, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MAILHOST_DATABASE_URL": settings.database_url,
        "MAILHOST_MAILDIR_ROOT": str(settings.maildir_root),
        "MAILHOST_HOSTNAME": settings.hostname,
        "MAILHOST_SMTP_HOST": "127.0.0.1",
        "MAILHOST_SMTP_PORT": "0",
        "MAILHOST_SMTP_GREET_DELAY": "0",
        "MAILHOST_LOG_LEVEL": "INFO",
        "MAILHOST_EVENT_LOOP": choice,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "smtp_ingress"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = parse_ready_line(proc.stdout.readline())
        assert ready is not None, proc.stderr.read() if proc.stderr else ""
        assert _mapped_uvloop(ready.pid) is (choice == "uvloop")
        with smtplib.SMTP("127.0.0.1", ready.port("smtp"), timeout=10) as client:
            refused = client.sendmail(
                "a@remote.example", [ADDRESSES["user"]], f"Subject: {choice}\r\n\r\nhi\r\n"
            )
        assert refused == {}
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert f"event loop: {choice}" in stderr
    [message] = new_messages(store, ADDRESSES["user"])
    assert f"Subject: {choice}".encode() in message
