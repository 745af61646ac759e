"""The worker supervisor through the real CLI: ``mailhost smtp --workers 2`` survives a worker
SIGKILLed again and again (more often than the burst limit), and keeps answering 220."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from app.readiness import Ready, parse_ready_line

TIMEOUT = 60.0
KILLS = 7  # more than RestartPolicy's default burst of 5, all within its 60 s window


def _wait_for(predicate: Callable[[], bool], what: str, log: Path) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; log:\n{log.read_text()}")
        time.sleep(0.05)


def _greeting(port: int, log: Path) -> int:
    """The reply code of the greeting a fresh SMTP client gets (and a clean QUIT).

    A connection the kernel had already queued on a worker's SO_REUSEPORT socket when that
    worker died, or that raced a worker joining the group, is reset: a kernel property that
    a client (and an SMTP sender) meets as one failed connection and retries. So a reset is
    retried a few times; a refusal, a timeout or a non-220 greeting fails at once.
    """
    last: Exception | None = None
    for _attempt in range(5):
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                code, _ = client.noop()
                assert code == 250
                return 220  # smtplib raises unless the greeting was 220
        except (ConnectionResetError, smtplib.SMTPServerDisconnected) as exc:
            last = exc
            time.sleep(0.2)
        except (OSError, smtplib.SMTPException) as exc:
            raise AssertionError(f"no greeting on port {port}: {exc!r}; log:\n{log.read_text()}")
    raise AssertionError(f"reset 5 times on port {port}: {last!r}; log:\n{log.read_text()}")


def test_killed_smtp_workers_are_restarted_and_the_port_keeps_answering(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOST_")}
    env.update(
        MAILHOST_DATABASE_URL=f"sqlite:///{tmp_path / 'mailhost.db'}",
        MAILHOST_MAILDIR_ROOT=str(tmp_path / "mail"),
        MAILHOST_HOSTNAME="mx.test.example",
        MAILHOST_SMTP_PORT="0",
        MAILHOST_SMTP_GREET_DELAY="0",
        MAILHOST_LOG_LEVEL="INFO",
    )
    cli = [sys.executable, "-m", "mailhost"]
    subprocess.run([*cli, "db", "upgrade"], env=env, cwd=tmp_path, check=True, timeout=120)
    log = tmp_path / "smtp.err"
    with open(log, "wb") as err:
        proc = subprocess.Popen([*cli, "smtp", "--workers", "2"], env=env, cwd=tmp_path, stderr=err)

    def ready() -> list[Ready]:
        lines = [parse_ready_line(line) for line in log.read_text().splitlines()]
        return [r for r in lines if r is not None and r.service == "smtp"]

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # A zombie (not yet reaped by the supervisor) is not serving.
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"

    try:
        _wait_for(lambda: len(ready()) >= 2 or proc.poll() is not None, "2 workers", log)
        assert proc.poll() is None, log.read_text()
        port = ready()[0].port("smtp")
        seen = {r.pid for r in ready()}
        for kill in range(KILLS):
            victim = ready()[-1].pid
            os.kill(victim, signal.SIGKILL)
            # Once the victim is gone (its listening socket closed: a connection queued on it
            # at that instant is reset, a kernel SO_REUSEPORT property no supervisor can fix),
            # the other worker keeps the port answering.
            _wait_for(lambda: not alive(victim), f"worker {victim} to die", log)
            assert _greeting(port, log) == 220
            _wait_for(
                lambda: len(ready()) >= 3 + kill and ready()[-1].pid not in seen,
                f"the replacement after kill {kill + 1}",
                log,
            )
            new = ready()[-1]
            seen.add(new.pid)
            assert new.port("smtp") == port
            assert alive(new.pid)
            assert _greeting(port, log) == 220
        assert proc.poll() is None, "the supervisor gave up:\n" + log.read_text()
        assert "giving up" not in log.read_text()
        assert log.read_text().count("restarting in") == KILLS
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=60)
    assert status == 0, log.read_text()
