"""Logging goes through a queue thread, also in forked worker processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_records_are_written_by_the_listener_thread() -> None:
    result = _run(
        """
        import logging, threading
        from app.logsetup import start_logging
        start_logging("INFO")
        logging.getLogger("t").info("hello from %s", threading.current_thread().name)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "INFO t: hello from MainThread" in result.stderr


def test_a_forked_child_still_writes_its_records() -> None:
    result = _run(
        """
        import logging, os
        from app.logsetup import start_logging
        start_logging("INFO")
        pid = os.fork()
        if pid == 0:
            logging.getLogger("child").warning("child says hi")
            import sys; sys.exit(0)
        os.waitpid(pid, 0)
        logging.getLogger("parent").warning("parent done")
        """
    )
    assert result.returncode == 0, result.stderr
    assert "child: child says hi" in result.stderr
    assert "parent: parent done" in result.stderr
