"""Who runs the periodic jobs (app/periodic.py): one process per database at a time.

Theory of operation. Every process that may run the jobs (worker 0 of the portal, every
delivery agent) is a candidate and asks ``acquire()`` at each tick; exactly one gets it:

* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock``) held on a connection
  of its own (outside the pool, in autocommit, so no transaction stays open) for as long as
  the process runs. When the process dies, its connection closes and the lock is free: the
  next candidate takes over at its next tick. The holder checks its connection at every tick
  (a ``SELECT 1``) and gives the jobs up when it is gone, because the server may have ended
  the session, and with it the lock, already.
* SQLite (one host by nature): an ``flock`` on a file next to the database file, released by
  the kernel when the process dies. An in-memory database has one process: it always runs.

The jobs keep their own guards as a second line (a queue sample per slot, one snapshot per
day), so a lock lost mid-tick costs at most a duplicated scan, never a double row.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from app.config import Settings
from app.db import make_engine, normalise_database_url

log = logging.getLogger("mailhost.periodic")

# The advisory lock's key: "mhperiod" in ASCII, as a signed 64-bit integer.
ADVISORY_KEY = int.from_bytes(b"mhperiod", "big", signed=True)


class PeriodicLock:
    """``acquire()`` each tick: True while this process is the one that runs the jobs."""

    def __init__(self, settings: Settings) -> None:
        url = make_url(normalise_database_url(settings.database_url))
        self._engine: Engine | None = None
        self._path: Path | None = None
        if url.get_backend_name() == "sqlite":
            if url.database and url.database != ":memory:":
                self._path = Path(url.database + ".periodic.lock")
        else:
            self._engine = make_engine(settings, poolclass=NullPool)
        self._conn: Connection | None = None
        self._file: IO[bytes] | None = None
        self.held = False
        self._mutex = threading.Lock()  # a tick's thread and the stopper may overlap

    def acquire(self) -> bool:
        with self._mutex:
            return self._note(self._acquire())

    def _note(self, held: bool) -> bool:
        if held != self.held:
            if held:
                log.info("periodic jobs: this process (pid %d) runs them", os.getpid())
            else:
                log.warning("periodic jobs: this process lost the lock; another one takes over")
        self.held = held
        return held

    def _acquire(self) -> bool:
        if self._engine is not None:
            return self._acquire_advisory(self._engine)
        if self._path is not None:
            return self._acquire_file(self._path)
        return True  # an in-memory database: this process is the only one

    def _acquire_advisory(self, engine: Engine) -> bool:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT 1"))
                return True
            except SQLAlchemyError:
                self._close_connection()
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = conn.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_KEY}
            ).scalar()
        except SQLAlchemyError:
            conn.close()
            raise
        if got:
            self._conn = conn
            return True
        conn.close()
        return False

    def _acquire_file(self, path: Path) -> bool:
        if self._file is not None:
            return True
        handle = path.open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True

    def _close_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})
            with contextlib.suppress(SQLAlchemyError):
                conn.close()

    def release(self) -> None:
        """Give the jobs up (at shutdown): another candidate takes them at its next tick."""
        with self._mutex:
            self._release()

    def _release(self) -> None:
        self._close_connection()
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()  # closing the file releases the flock
        self.held = False
        if self._engine is not None:
            self._engine.dispose()
