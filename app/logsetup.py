"""Process-wide logging: records go through a queue to one writer thread.

An event loop thread never blocks on log output (a full pipe to a slow supervisor, a slow
disk); the listener thread formats and writes. Used by every entry point. A forked worker
(``mailhost smtp --workers N``) inherits no threads, so it gets a listener of its own.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import sys
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"

_installed: list[tuple[logging.Handler, logging.handlers.QueueListener]] = []


def _install(output: logging.Handler) -> None:
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, output)
    handler = logging.handlers.QueueHandler(records)
    logging.getLogger().addHandler(handler)
    listener.start()
    atexit.register(listener.stop)  # writes what is still queued
    _installed[:] = [(handler, listener)]


def _after_fork_in_child() -> None:
    if not _installed:
        return
    handler, listener = _installed[0]
    logging.getLogger().removeHandler(handler)
    _install(listener.handlers[0])


def start_logging(level: str, *, stream: TextIO | None = None) -> None:
    """Configure the root logger once per process (later calls change nothing, like
    ``logging.basicConfig``)."""
    root = logging.getLogger()
    if root.handlers:
        return
    output = logging.StreamHandler(stream if stream is not None else sys.stderr)
    output.setFormatter(logging.Formatter(LOG_FORMAT))
    root.setLevel(level.upper())
    # aiosmtpd logs every command line at INFO; our own one line per transaction is enough.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    _install(output)


os.register_at_fork(after_in_child=_after_fork_in_child)
