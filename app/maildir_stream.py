"""Streamed delivery, the second room of the Maildir store: bodies too large to hold in memory.

It builds no path itself: the spill file and the copies are created through ``MaildirStore``'s
public staging calls (``scratch_file``, ``stage``, ``seal``, ``publish_staged``, ``rollback``),
the same ones ``deliver`` uses, so names, S=/W= sizes, the recreation of a removed Maildir,
the index notes and the stale ``tmp/`` cleanup are exactly ``deliver``'s.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from app.maildir import (
    MailboxRef,
    MaildirError,
    MaildirStore,
    MessageInfo,
    StagedMessage,
    write_all,
)

# ---------------------------------------------------------------- streamed delivery
# A body arriving in pieces stays in memory up to this many octets (most mail is far smaller:
# it then takes ``deliver``'s path unchanged), beyond that it is spilled to one file in tmp/.
SPOOL_MEMORY_LIMIT = 256 * 1024
# Octets per copy_file_range / fallback read when a spilled body is copied into each copy.
_COPY_CHUNK = 8 << 20


class SpooledBody:
    """A message body (LF line endings) arriving in pieces, kept for ``deliver_spooled``.

    ``append`` only keeps the piece in memory (it never blocks: call it on an event loop);
    once ``needs_flush`` says so, ``flush`` (blocking: call it on a worker thread) writes
    what is buffered to one spill file in the first recipient's ``tmp/``, so memory stays at
    about ``memory_limit`` whatever the size. ``discard`` removes the spill file (client
    gone, size exceeded, refusal, deadline); it is idempotent, safe against a concurrent
    ``flush``, and a spill file left by a crash is stale ``tmp/`` debris that ``clean_tmp``
    removes like any other.
    """

    def __init__(self, store: MaildirStore, mailbox: MailboxRef, *, memory_limit: int) -> None:
        self._store = store
        self._mailbox = mailbox
        self._memory_limit = memory_limit
        self._chunks: list[bytes] = []
        self._buffered = 0
        self.size = 0  # octets appended (LF line endings)
        self.lines = 0  # LFs appended: the wire size is size + lines
        self._fd: int | None = None
        self._path: Path | None = None
        self._written = 0
        self._head_cut = 0  # octets at the start of the spill file not delivered (cut_head)
        # The header section cut_head left out: the message's own head as it arrived, for
        # readers that need it (forwarding loops, auto-replies) once the body lacks it.
        self.removed_head = b""
        self._discarded = False
        self._delivering = False  # deliver_spooled owns the body (and its cleanup) now
        self._lock = threading.Lock()

    def append(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self._buffered += len(data)
            self.size += len(data)
            self.lines += data.count(b"\n")

    @property
    def needs_flush(self) -> bool:
        return self._buffered >= self._memory_limit

    @property
    def spilled(self) -> bool:
        return self._fd is not None

    @property
    def buffered_chunks(self) -> list[bytes]:
        """The pieces not yet written to the spill file (all of them while not spilled)."""
        return self._chunks

    def flush(self) -> None:
        """Write the buffered pieces to the spill file, creating it on first use."""
        with self._lock:
            if self._discarded:
                raise MaildirError("the message body was discarded")
            chunks, self._chunks, self._buffered = self._chunks, [], 0
            if not chunks:
                return
            if self._fd is None:
                self._fd, self._path = self._store.scratch_file(self._mailbox, ",spool")
            write_all(self._fd, chunks)
            self._written += sum(len(c) for c in chunks)

    def read_all(self) -> bytes:
        """The whole body as one string (for the content scanners). Blocking once spilled
        (it flushes and reads the spill file): call it on a worker thread then."""
        if self._fd is None:
            return b"".join(self._chunks)
        self.flush()
        with self._lock:
            if self._fd is None:
                raise MaildirError("the message body was discarded")
            return os.pread(self._fd, self._written - self._head_cut, self._head_cut)

    def cut_head(self, head: bytes) -> None:
        """Leave out the first ``len(head)`` octets, which must be ``head``, from every copy:
        the caller puts a rewritten header section into each copy's own header instead
        (the scanner's subject tag, forged Authentication-Results removed). Blocking once
        spilled, like ``read_all``."""
        if not head:
            return
        if self._fd is None:
            joined = b"".join(self._chunks)
            if not joined.startswith(head):
                raise ValueError("cut_head: the body does not start with that header")
            rest = joined[len(head) :]
            self._chunks, self._buffered = ([rest] if rest else []), len(rest)
        else:
            self.flush()
            if os.pread(self._fd, len(head), self._head_cut) != head:
                raise ValueError("cut_head: the body does not start with that header")
            self._head_cut += len(head)
        self.size -= len(head)
        self.lines -= head.count(b"\n")
        self.removed_head += head

    def read_chunks(self) -> Iterator[bytes]:
        """The body so far (LF line endings): the spill file's octets, then what is still
        buffered. Blocking when spilled (a worker thread); for forwards and auto-replies."""
        fd = self._fd
        offset = self._head_cut  # octets a scan rewrote into each copy's own header
        while fd is not None and offset < self._written:
            piece = os.pread(fd, min(1 << 20, self._written - offset), offset)
            if not piece:
                raise MaildirError("the spilled message body is shorter than written")
            offset += len(piece)
            yield piece
        yield from list(self._chunks)

    def _copy_into(self, fd: int) -> None:
        """Append the whole spilled body to ``fd`` (in the kernel where it can)."""
        assert self._fd is not None and not self._chunks
        offset = self._head_cut
        while offset < self._written:
            count = min(_COPY_CHUNK, self._written - offset)
            try:
                copied = os.copy_file_range(self._fd, fd, count, offset)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                copied = write_all(fd, [os.pread(self._fd, min(count, 1 << 20), offset)])
            if copied == 0:
                raise MaildirError("the spilled message body is shorter than written")
            offset += copied

    def write_to(self, write: Callable[[bytes], None], chunk: int = 1 << 20) -> None:
        """Pass the whole body appended so far to ``write`` in order (a spilled body is read
        back from its file in pieces of ``chunk`` octets: blocking, call it on a worker
        thread). Copies the body into the outbound spool for relay recipients."""
        with self._lock:
            if self._discarded:
                raise MaildirError("the message body was discarded")
            if self._fd is not None:
                # Past the octets a scan rewrote into the copy's own header (cut_head).
                for offset in range(self._head_cut, self._written, chunk):
                    write(os.pread(self._fd, min(chunk, self._written - offset), offset))
            for piece in self._chunks:
                write(piece)

    def head(self, limit: int) -> bytes:
        """The first ``limit`` octets of the body (the header section, for loop checks)."""
        with self._lock:
            if self._fd is not None and self._written:
                start = os.pread(self._fd, min(limit, self._written), 0)
            else:
                start = b""
            pieces = [start]
            size = len(start)
            for piece in self._chunks:
                if size >= limit:
                    break
                pieces.append(piece[: limit - size])
                size += len(pieces[-1])
            return b"".join(pieces)

    def claim(self) -> None:
        """Hand the body to ``deliver_spooled``: from now on ``discard`` leaves it alone (it
        may be called from a connection that is gone while the copies are written: the
        delivery finishes, or fails, and removes the spill file itself)."""
        with self._lock:
            if self._discarded:
                raise MaildirError("the message body was discarded")
            self._delivering = True

    def discard(self) -> None:
        """Forget the body and remove its spill file (if any), unless it is being delivered."""
        with self._lock:
            if self._delivering:
                return
            self._discard_locked()

    def discard_if_in_memory(self) -> bool:
        """``discard`` without blocking, when there is no spill file to remove (nothing was
        spilled and no flush holds the lock): True if done; False leaves it to ``discard``
        on a worker thread. The common case of a small message: no thread hand-off."""
        if not self._lock.acquire(blocking=False):
            return False  # a flush (file I/O) in progress
        try:
            if self._fd is not None or self._path is not None:
                return False
            if not self._delivering:
                self._discard_locked()  # no descriptor, no path: memory only
            return True
        finally:
            self._lock.release()

    def _release(self) -> None:
        with self._lock:
            self._delivering = False
            self._discard_locked()

    def _discard_locked(self) -> None:
        # Under the lock: a flush or a copy never sees its descriptor closed (or reused).
        self._discarded = True
        self._chunks, self._buffered = [], 0
        fd, self._fd = self._fd, None
        path, self._path = self._path, None
        if fd is not None:
            os.close(fd)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):  # its Maildir was removed meanwhile
                path.unlink()


def spool_body(
    store: MaildirStore, mailbox: MailboxRef, *, memory_limit: int = SPOOL_MEMORY_LIMIT
) -> SpooledBody:
    """A body to stream into, spilling (if it grows large) into ``mailbox``'s ``tmp/``."""
    return SpooledBody(store, mailbox, memory_limit=memory_limit)


def deliver_spooled(
    store: MaildirStore, copies: Sequence[tuple[MailboxRef, bytes]], body: SpooledBody
) -> list[MessageInfo]:
    """Store ``header + body`` for each ``(mailbox, header)`` with ``deliver``'s guarantees.

    A body still in memory goes through ``MaildirStore.deliver`` itself. A spilled one is
    copied into each copy's ``tmp/`` file after its header (``copy_file_range``: no octet
    passes through this process on the same file system; per-recipient trace headers
    rule out hard links), each file fsync'd, all renamed into ``new/``, the directories
    fsync'd: all or nothing, same names and S=/W= sizes as ``deliver``. The body (and its
    spill file) is discarded when this returns or raises.
    """
    body.claim()
    try:
        if not body.spilled:
            return store.deliver(
                [(mailbox, [header, *body.buffered_chunks]) for mailbox, header in copies]
            )
        body.flush()
        return _deliver_spilled(store, copies, body)
    finally:
        body._release()


def _deliver_spilled(
    store: MaildirStore, copies: Sequence[tuple[MailboxRef, bytes]], body: SpooledBody
) -> list[MessageInfo]:
    staged: list[StagedMessage] = []  # ours only: the rollback may remove them
    try:
        for mailbox, header in copies:
            size = len(header) + body.size
            wire = size + header.count(b"\n") + body.lines
            copy = store.stage(mailbox, size=size, wire=wire)
            staged.append(copy)
            assert copy.fd is not None
            write_all(copy.fd, [header])
            body._copy_into(copy.fd)
            store.seal(copy)
    except BaseException:
        store.rollback(staged)
        raise
    return store.publish_staged(staged)
