"""The Maildir store: the only code that builds message paths or touches message files.

Layout: ``<root>/<domain>/<local part>/{tmp,new,cur}``. Delivery follows the Maildir protocol
(write into ``tmp/``, fsync, rename into ``new/``, fsync the directory), so a message is either
complete in ``new/`` or not there at all. File names use Dovecot's form::

    {sec}.M{usec}P{pid}Q{n}.{host},S={size},W={wire size}

where ``S`` is the size on disk (LF line endings) and ``W`` the size with CRLF line endings as
POP3 sends it; both let listing and usage work without opening files. Maildirs written by
Postfix or Dovecot (names without ``S=``/``W=``, ``:2,FLAGS`` suffixes in ``cur/``) are read too.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from app import maildir_index
from app.maildir_files import (
    MessageReader,
    count_wire_size,
    parse_entry,
    sizes_from_name,
    time_from_name,
    uid_from_name,
)
from app.maildir_index import SUBDIRS, Listing, PackedListing

# Refuse path components that could escape the root or hide files; database values are
# validated long before this, this is the last line of defence.
_SAFE_COMPONENT = re.compile(r"^[A-Za-z0-9!#$%&'*+=?^_`{|}~.\-]+$")
# Files in tmp/ older than this are debris of a crashed delivery (the DATA deadline is far
# shorter), never something still being written.
DEFAULT_STALE_TMP_SECONDS = 3600.0


class MaildirError(Exception):
    """A path or file operation the store refuses or could not complete."""


class _NamedDomain(Protocol):
    @property
    def name(self) -> str: ...


class _MailboxRow(Protocol):
    """What ``MailboxRef.of`` reads: a mailbox row (``app.models.Mailbox``) or the like."""

    @property
    def local_part(self) -> str: ...

    @property
    def domain(self) -> _NamedDomain: ...


@dataclass(frozen=True, slots=True)
class MailboxRef:
    """Where a mailbox lives: validated domain (IDNA, lower case) and local part from the DB."""

    domain: str
    local_part: str

    @classmethod
    def of(cls, mailbox: _MailboxRow) -> MailboxRef:
        """The Maildir of a mailbox row (its domain must be loaded or loadable)."""
        return cls(domain=mailbox.domain.name, local_part=mailbox.local_part)


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message as listed, without its contents having been read."""

    uid: str  # stable unique id (RFC 1939 UIDL-safe), derived from the file name
    path: Path
    size: int  # octets on disk (LF line endings)
    wire_size: int | None  # octets with CRLF line endings, when known from the name
    mtime: float


@dataclass(frozen=True, slots=True)
class Usage:
    bytes: int
    messages: int


def _sanitise_host(host: str) -> str:
    # Dovecot's encoding of the characters that are special in Maildir names.
    return host.replace("/", r"\057").replace(":", r"\072").replace(",", r"\054") or "localhost"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(slots=True)
class StagedMessage:
    """A copy being written in ``tmp/`` (``MaildirStore.stage``), ``fd`` open until sealed."""

    mailbox: MailboxRef
    tmp: Path
    final: Path
    size: int
    wire: int
    fd: int | None


def write_all(fd: int, chunks: Sequence[bytes]) -> int:
    """writev every chunk to ``fd`` (short writes resumed); returns the octets written."""
    views = [memoryview(c) for c in chunks if len(c)]  # writev of b"" returns 0
    total = 0
    while views:
        written = os.writev(fd, views)
        total += written
        while written and views:
            if written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][written:]
                written = 0
    return total


class MaildirStore:
    """All message-file operations. Thread-safe; safe across processes sharing the volume."""

    def __init__(
        self,
        root: Path,
        *,
        hostname: str | None = None,
        clock: Callable[[], float] = time.time,
        fsync: bool = True,
    ) -> None:
        self.root = Path(root).resolve()
        self._root_prefix = str(self.root) + os.sep
        self._host = _sanitise_host(hostname or socket.gethostname())
        self._clock = clock
        self._fsync = fsync
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        # Maildirs known to exist, by mailbox: a delivery skips the path checks and mkdirs.
        self._known_dirs: dict[MailboxRef, Path] = {}

    # ---------------------------------------------------------------- paths
    def mailbox_path(self, mailbox: MailboxRef) -> Path:
        """The Maildir of ``mailbox``; refuses anything that is not a plain name under root."""
        for part in (mailbox.domain, mailbox.local_part):
            if (
                not part
                or part in (".", "..")
                or part.startswith(".")
                or not _SAFE_COMPONENT.match(part)
            ):
                raise MaildirError(f"refused unsafe Maildir path component {part!r}")
        path = self.root / mailbox.domain / mailbox.local_part
        if path.resolve().parent.parent != self.root:
            raise MaildirError("refused Maildir path outside the root")
        return path

    def ensure(self, mailbox: MailboxRef) -> Path:
        """Create the Maildir (tmp, new, cur) if missing and return its path."""
        known = self._known_dirs.get(mailbox)
        if known is not None:
            return known
        path = self.mailbox_path(mailbox)
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        self._known_dirs[mailbox] = path
        return path

    def _unique_base(self) -> str:
        now = self._clock()
        sec = int(now)
        usec = int((now - sec) * 1_000_000)
        with self._lock:
            n = next(self._counter)
        return f"{sec}.M{usec}P{os.getpid()}Q{n}.{self._host}"

    def _create_tmp(self, mailbox: MailboxRef, tmp: Path, *, readable: bool = False) -> int:
        flags = (os.O_RDWR if readable else os.O_WRONLY) | os.O_CREAT | os.O_EXCL
        try:
            return os.open(tmp, flags, 0o600)
        except FileNotFoundError:
            # Our cache said the Maildir exists, but another process removed it (mailbox
            # deleted, then created again): forget the cache entry, recreate, retry once.
            self._known_dirs.pop(mailbox, None)
            self.ensure(mailbox)
            return os.open(tmp, flags, 0o600)

    # ---------------------------------------------------------------- staging (public)
    # Every writer of message files goes through these (``deliver`` here, the streamed
    # delivery in app/maildir_stream.py): stage a copy in tmp/, write it through ``fd``,
    # ``seal`` it, then ``publish_staged`` all copies at once, or ``rollback``.
    def stage(self, mailbox: MailboxRef, *, size: int, wire: int) -> StagedMessage:
        """A new file in the mailbox's ``tmp/`` named for ``size`` / ``wire`` octets, open
        for writing (``fd``)."""
        path = self.ensure(mailbox)
        name = f"{self._unique_base()},S={size},W={wire}"
        tmp = path / "tmp" / name
        fd = self._create_tmp(mailbox, tmp)
        return StagedMessage(mailbox, tmp, path / "new" / name, size, wire, fd)

    def scratch_file(self, mailbox: MailboxRef, suffix: str) -> tuple[int, Path]:
        """A file of our own in the mailbox's ``tmp/``, open for reading and writing (a
        spill file). Never published; one left by a crash is stale tmp/ debris for
        ``clean_tmp``."""
        tmp = self.ensure(mailbox) / "tmp" / f"{self._unique_base()}{suffix}"
        return self._create_tmp(mailbox, tmp, readable=True), tmp

    def seal(self, staged: StagedMessage) -> None:
        """fsync (when this store fsyncs) and close a staged file: written in full."""
        fd, staged.fd = staged.fd, None
        if fd is None:
            return
        try:
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def publish_staged(self, staged: Sequence[StagedMessage]) -> list[MessageInfo]:
        """Rename every sealed copy into ``new/`` (noting it in the index) and fsync the
        ``new/`` directories: all or nothing. If anything fails, every copy is removed again
        (``rollback``) and the error propagates."""
        renamed: list[StagedMessage] = []
        try:
            for copy in staged:
                if copy.fd is not None:
                    raise MaildirError("publish of a copy that was not sealed")
                self.publish(copy.tmp, copy.final, size=copy.size, wire=copy.wire)
                renamed.append(copy)
            if self._fsync:
                for directory in {copy.final.parent for copy in renamed}:
                    _fsync_dir(directory)
        except BaseException:
            self.rollback(staged, published=renamed)
            raise
        now = self._clock()
        return [
            MessageInfo(uid_from_name(c.final.name), c.final, c.size, c.wire, now) for c in staged
        ]

    def rollback(
        self, staged: Sequence[StagedMessage], *, published: Sequence[StagedMessage] = ()
    ) -> None:
        """Remove staged copies (closing open ones) and, of ``published``, the files already
        renamed into ``new/`` (noted as removed). Only our own files: never raises."""
        for copy in published:
            with contextlib.suppress(OSError):
                self._unlink_noted(copy.final.parent.parent, [(copy.final, copy.size)])
        for copy in staged:
            if copy.fd is not None:
                with contextlib.suppress(OSError):
                    os.close(copy.fd)
                copy.fd = None
            with contextlib.suppress(OSError):
                copy.tmp.unlink()

    # ---------------------------------------------------------------- delivery
    def deliver(self, copies: Sequence[tuple[MailboxRef, Sequence[bytes]]]) -> list[MessageInfo]:
        """Store each copy (chunks already with LF line endings) in its mailbox's ``new/``.

        All or nothing: when this returns, every copy is fsync'd and renamed into ``new/`` and
        each ``new/`` directory is fsync'd; if anything fails, every file this call created is
        removed again and the error propagates, so a retried delivery never duplicates.
        """
        # Recorded only once created: the cleanup must never remove someone else's file.
        staged: list[StagedMessage] = []
        try:
            for mailbox, chunks in copies:
                size = sum(len(c) for c in chunks)
                wire = size + sum(c.count(b"\n") for c in chunks)
                copy = self.stage(mailbox, size=size, wire=wire)
                staged.append(copy)
                assert copy.fd is not None
                write_all(copy.fd, chunks)
                self.seal(copy)
        except BaseException:
            self.rollback(staged)
            raise
        return self.publish_staged(staged)

    def publish(self, tmp: Path, final: Path, *, size: int, wire: int) -> None:
        """Rename a written (and fsync'd) message from ``tmp/`` into ``new/`` and note it in
        the Maildir's index: the one call every writer makes to publish a message.

        Both happen under the index lock, so a concurrent compaction never sees the file
        without its log line or the other way round.  Noting never fails the delivery: the
        index is a cache, and one that missed a message is found stale by its mtimes.
        """
        maildir = final.parent.parent
        with maildir_index.locked(maildir):
            os.rename(tmp, final)
            stamp = time_from_name(final.name)
            with contextlib.suppress(OSError):
                maildir_index.note_added(
                    maildir, [(final.name, size, wire, self._clock() if stamp is None else stamp)]
                )

    def _unlink_noted(
        self, maildir: Path, files: Sequence[tuple[Path, int]], *, fsync: bool = False
    ) -> list[Path]:
        """Unlink these files of one Maildir under one index lock, note them in its index in
        one log append and (``fsync``, when this store fsyncs) fsync each directory once;
        the ones removed.

        A file that cannot be removed (other than already gone) does not stop the others:
        every removal that worked is noted and made durable, then the first error is raised.
        """
        removed: list[Path] = []
        failure: OSError | None = None
        with maildir_index.locked(maildir):
            for path, _ in files:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    failure = failure or exc
                    continue
                removed.append(path)
            gone = set(removed)
            with contextlib.suppress(OSError):
                maildir_index.note_removed(
                    maildir, [(p.name, size) for p, size in files if p in gone]
                )
            if fsync and self._fsync:
                for directory in {path.parent for path in removed}:
                    _fsync_dir(directory)
        if failure is not None:
            raise failure
        return removed

    def listing(self, mailbox: MailboxRef) -> tuple[Path, Listing]:
        """The Maildir and its messages as compact arrays, oldest first (from the index)."""
        path = self.mailbox_path(mailbox)
        if not path.is_dir():
            return path, Listing.empty()
        return path, maildir_index.load(path, parse_entry, clock=self._clock)

    def packed_listing(self, mailbox: MailboxRef) -> tuple[Path, PackedListing]:
        """Like ``listing``, packed to be kept for a session (POP3's snapshot)."""
        path = self.mailbox_path(mailbox)
        if not path.is_dir():
            return path, PackedListing.pack(Listing.empty())
        return path, maildir_index.load_packed(path, parse_entry, clock=self._clock)

    # ---------------------------------------------------------------- reading
    def list_messages(self, mailbox: MailboxRef) -> list[MessageInfo]:
        """Messages in ``new/`` and ``cur/``, oldest first (by delivery time, then name)."""
        path, listing = self.listing(mailbox)
        return [
            MessageInfo(
                uid=uid_from_name(name),
                path=listing.path(path, i),
                size=listing.sizes[i],
                wire_size=None if listing.foreign(i) else listing.wires[i],
                mtime=listing.mtimes[i],
            )
            for i, name in enumerate(listing.names)
        ]

    def scan_messages(self, mailbox: MailboxRef) -> list[MessageInfo]:
        """Like ``list_messages`` but from the directories themselves, never the index.

        Names we (or Dovecot) wrote carry the sizes and start with the delivery second, so
        they need no stat; only foreign names are stat'ed for their size and time.
        """
        path = self.mailbox_path(mailbox)
        found: list[MessageInfo] = []
        for sub in ("new", "cur"):
            directory = path / sub
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                s, w = sizes_from_name(entry.name)
                stamp = time_from_name(entry.name)
                if s is None or stamp is None:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # expunged meanwhile by another process
                        continue
                    s = st.st_size if s is None else s
                    stamp = st.st_mtime if stamp is None else stamp
                found.append(
                    MessageInfo(
                        uid=uid_from_name(entry.name),
                        path=Path(entry.path),
                        size=s,
                        wire_size=w,
                        mtime=stamp,
                    )
                )
        found.sort(key=lambda m: (m.mtime, m.path.name))
        return found

    def wire_size(self, message: MessageInfo) -> int:
        """Octets with CRLF line endings; read from the name, or counted for foreign files."""
        if message.wire_size is not None:
            return message.wire_size
        return count_wire_size(message.path)

    def open_message(self, message: MessageInfo) -> BinaryIO:
        """Open a listed message for reading (raises FileNotFoundError if it is gone)."""
        self._check_inside(message.path)
        fd = os.open(message.path, os.O_RDONLY | os.O_NOFOLLOW)
        return os.fdopen(fd, "rb")

    def open_reader(self, message: MessageInfo) -> MessageReader:
        """Open a listed message for streaming reads (raises FileNotFoundError if gone)."""
        return MessageReader(self.open_message(message))

    def read_listed(self, maildir: Path, listing: Listing | PackedListing, index: int) -> bytes:
        """The whole contents of message ``index`` of a listing (FileNotFoundError if gone).

        For small messages (POP3 RETR of a few KiB): one open, one read of the listed size
        and one more to see the end, on a plain file descriptor, so no path object, no
        ``MessageInfo`` and no buffered file object is made per message.  A file that grew
        since it was listed is still read to its end.
        """
        path = f"{maildir}/{SUBDIRS[listing.subs[index] & 1]}/{listing.name(index)}"
        self._check_inside(path)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            want = listing.sizes[index] + 1
            data = os.read(fd, want)
            if len(data) < want:
                return data
            chunks = [data]
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def usage(self, mailbox: MailboxRef) -> Usage:
        """Bytes and messages stored: the index's totals (same cost for any mailbox size)."""
        path = self.mailbox_path(mailbox)
        if not path.is_dir():
            return Usage(bytes=0, messages=0)
        size, count = maildir_index.usage(path, parse_entry, clock=self._clock)
        return Usage(bytes=size, messages=count)

    # ---------------------------------------------------------------- removal
    def expunge(self, mailbox: MailboxRef, messages: Iterable[MessageInfo]) -> int:
        """Delete these listed messages; returns how many files were removed.

        The listed paths are unlinked directly (no new listing on the hot path), all of one
        Maildir under one index lock, with one log append and one fsync per directory (not
        one per file). A message another reader renamed meanwhile (``new/`` to ``cur/``,
        flags changed) is found again by its uid; one already gone counts as not removed.
        An unlink that fails raises after the others were removed, noted and fsync'd.
        """
        by_maildir: dict[Path, list[tuple[Path, int]]] = {}
        uids: dict[Path, str] = {}
        for message in messages:
            self._check_inside(message.path)
            by_maildir.setdefault(message.path.parent.parent, []).append(
                (message.path, message.size)
            )
            uids[message.path] = message.uid
        removed: list[Path] = []
        for maildir, files in by_maildir.items():
            removed += self._unlink_noted(maildir, files, fsync=True)
        gone = set(removed)
        moved = {uid for path, uid in uids.items() if path not in gone}
        if moved:
            again = [(m.path, m.size) for m in self.scan_messages(mailbox) if m.uid in moved]
            if again:
                removed += self._unlink_noted(again[0][0].parent.parent, again, fsync=True)
        return len(removed)

    def remove_mailbox(self, mailbox: MailboxRef) -> None:
        """Delete a whole Maildir (used when a mailbox is deleted). A Maildir that was never
        created is no error; files that cannot be removed raise MaildirError naming the path
        (they stay on disk, the caller reports them)."""
        path = self.mailbox_path(mailbox)
        self._known_dirs.pop(mailbox, None)
        failures: list[str] = []

        def failed(failed_path: str, error: BaseException) -> None:
            if not isinstance(error, FileNotFoundError):  # gone already: what we wanted
                reason = error.strerror if isinstance(error, OSError) else None
                where = "" if failed_path == str(path) else f" ({failed_path})"
                failures.append(f"{reason or error}{where}")

        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=lambda _f, p, e: failed(p, e))
        else:

            def on_error(_function: Any, failed_path: str, info: Any) -> None:
                failed(failed_path, info[1])

            shutil.rmtree(path, onerror=on_error)
        if failures:
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise MaildirError(f"could not remove {path}: {failures[0]}{more}")

    def clean_tmp(self, *, older_than: float = DEFAULT_STALE_TMP_SECONDS) -> int:
        """Remove stale files in every ``tmp/`` (crash debris); they are never delivered."""
        cutoff = self._clock() - older_than
        removed = 0
        for tmp in self.root.glob("*/*/tmp"):
            for entry in os.scandir(tmp):
                try:
                    if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue
        return removed

    def _check_inside(self, path: Path | str) -> None:
        # A lexical check (no syscalls: this runs on every POP3 RETR); symlinks are refused by
        # list_messages, which never lists them, and by O_NOFOLLOW in open_message.
        if not os.path.normpath(path).startswith(self._root_prefix):
            raise MaildirError("refused path outside the Maildir root")
