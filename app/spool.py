"""The outbound spool: the only code that builds spool paths or touches queued message files.

Layout: ``<root>/tmp/`` for files being written and ``<root>/<xx>/<spool id>`` for queued
messages, where ``xx`` is the first two characters of the id (256 directories keep each one
small). A message is written to ``tmp/``, fsync'd, renamed into place and the directory fsync'd
before its id is handed back, so a spool id in the database always names a complete file. The
database rows are written after the file; a crash in between leaves an orphan file that
``list_files`` reports (by age) and the queue service's cleaner removes.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

# 20 random hex characters (80 bits): unique across hosts sharing the volume without any
# coordination, and safe as a file name.
_ID = re.compile(r"^[0-9a-f]{20}$")
_TMP = "tmp"


class SpoolError(Exception):
    """A spool id the store refuses, or a file operation that failed."""


@dataclass(frozen=True, slots=True)
class SpoolFile:
    spool_id: str
    size: int


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    spool_id: str
    mtime: float


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpoolWriter:
    """A message being written: ``write`` chunks, then ``commit`` (or ``abort``)."""

    def __init__(self, spool: SpoolStore, spool_id: str, tmp: Path, final: Path) -> None:
        self._spool = spool
        self.spool_id = spool_id
        self._tmp = tmp
        self._final = final
        self._fd: int | None = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if self._fd is None:
            raise SpoolError("write after commit or abort")
        view = memoryview(chunk)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(chunk)

    def commit(self) -> SpoolFile:
        """fsync the file, rename it into place, fsync the directory; then it is durable."""
        if self._fd is None:
            raise SpoolError("commit after commit or abort")
        fd, self._fd = self._fd, None
        try:
            if self._spool.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        self._final.parent.mkdir(exist_ok=True)
        os.rename(self._tmp, self._final)
        if self._spool.fsync:
            _fsync_dir(self._final.parent)
        return SpoolFile(self.spool_id, self.size)

    def abort(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


class SpoolStore:
    """All spool file operations. Safe across threads, processes and hosts sharing the volume."""

    def __init__(
        self, root: Path, *, fsync: bool = True, clock: Callable[[], float] = time.time
    ) -> None:
        self.root = Path(root).resolve()
        self.fsync = fsync
        self._clock = clock

    def _path(self, spool_id: str) -> Path:
        if not _ID.match(spool_id):
            raise SpoolError(f"refused malformed spool id {spool_id!r}")
        return self.root / spool_id[:2] / spool_id

    def _tmp_dir(self) -> Path:
        tmp = self.root / _TMP
        tmp.mkdir(parents=True, exist_ok=True)
        return tmp

    @contextlib.contextmanager
    def writer(self) -> Iterator[SpoolWriter]:
        """Stream a message in; commit inside the block. Anything not committed is removed."""
        spool_id = secrets.token_hex(10)
        w = SpoolWriter(self, spool_id, self._tmp_dir() / spool_id, self._path(spool_id))
        try:
            yield w
        except BaseException:
            w.abort()
            raise
        else:
            if w._fd is not None:  # left uncommitted on purpose: discard it
                w.abort()

    def open_spill(self) -> tuple[int, Path]:
        """A new scratch file in ``tmp/`` opened for reading and writing (a message body
        being received, before it is known to be wanted); ``clean_tmp`` removes leftovers."""
        path = self._tmp_dir() / f"{secrets.token_hex(10)}.body"
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), path

    def write(self, chunks: Iterable[bytes]) -> SpoolFile:
        """Write a whole message and return its durable spool file."""
        with self.writer() as w:
            for chunk in chunks:
                w.write(chunk)
            return w.commit()

    def open(self, spool_id: str) -> BinaryIO:
        try:
            return self._path(spool_id).open("rb")
        except FileNotFoundError as exc:
            raise SpoolError(f"spool file {spool_id} is missing") from exc

    def read(self, spool_id: str) -> bytes:
        with self.open(spool_id) as f:
            return f.read()

    def read_headers(self, spool_id: str, limit: int = 64 * 1024) -> bytes:
        """The header section (up to the first empty line, at most ``limit`` octets)."""
        with self.open(spool_id) as f:
            head = f.read(limit)
        for sep in (b"\r\n\r\n", b"\n\n"):
            at = head.find(sep)
            if at >= 0:
                return head[: at + len(sep) // 2]
        return head

    def exists(self, spool_id: str) -> bool:
        return self._path(spool_id).is_file()

    def remove(self, spool_id: str) -> bool:
        """Remove a spool file; False if it was already gone."""
        try:
            self._path(spool_id).unlink()
        except FileNotFoundError:
            return False
        return True

    def list_files(self, *, older_than: float) -> list[SpoolEntry]:
        """Spool files last modified more than ``older_than`` seconds ago (candidates for the
        orphan cleaner; younger files may belong to an enqueue in progress)."""
        cutoff = self._clock() - older_than
        found: list[SpoolEntry] = []
        if not self.root.is_dir():
            return found
        for sub in self.root.iterdir():
            if sub.name == _TMP or not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                if not _ID.match(entry.name):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    mtime = entry.stat().st_mtime
                    if mtime < cutoff:
                        found.append(SpoolEntry(entry.name, mtime))
        return found

    def clean_tmp(self, *, older_than: float) -> int:
        """Remove files left in ``tmp/`` by a crashed writer; returns how many."""
        cutoff = self._clock() - older_than
        removed = 0
        tmp = self.root / _TMP
        if not tmp.is_dir():
            return 0
        for entry in os.scandir(tmp):
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
        return removed
