"""The per-Maildir index: a cache of the listing and the usage, owned by ``app/maildir.py``.

Theory of operation
-------------------
Listing a Maildir of 50,000 messages means reading 50,000 directory entries and parsing
50,000 names; the index keeps that work off the POP3 login and the quota check at RCPT, as
Dovecot's ``dovecot-uidlist`` / index files and Maildir++'s ``maildirsize`` do.  Two files in
the Maildir's own directory:

* ``mailhost-index``: the *base*, a binary snapshot of every message (name, size on disk, size
  with CRLF, delivery time, ``new``/``cur``), sorted as POP3 numbers them, with the totals and
  the ``st_mtime_ns`` of ``new/`` and ``cur/`` when it was taken.  Only ever replaced whole by
  an atomic rename, so a reader never sees half of one.
* ``mailhost-index.log``: an *append log* of what changed since (``+`` a delivered message,
  ``-`` an expunged one), each line with the directory mtimes after that change.  Usage is the
  base's totals plus the log's deltas: reading the quota costs the same for any mailbox size.

Writers (delivery, expunge, compaction) hold ``flock`` on the Maildir directory, so appends and
rewrites never lose each other's lines, across threads and processes on one host.  The log
starts with the generation of the base it extends; compaction writes base ``g+1`` first and
then a fresh log ``g+1``, so a crash between the two leaves an old log that is ignored (its lines
are already in the base), never one counted twice.

The Maildir is the truth, the index a cache (nothing here is fsync'd).  It is trusted only while
``new/`` and ``cur/`` still have the mtimes it last recorded; any other tool that adds, removes
or renames a file changes them, and the next reader repairs the index from a fresh directory
listing (only names it does not know are parsed).  Directory mtimes have the granularity of a
clock tick, so a change in the same tick as one we recorded would be invisible (git's "racy"
entries): a listing therefore trusts the index without reading the directories only when the
log is empty and the base was taken ``RACY_SECONDS`` after the last change it records.
Otherwise it compares the directory's names with the index (cheap: no parsing, no stat) and
compacts.  Usage does not re-list for racy entries (a quota is approximate anyway, like
Maildir++'s), only when the mtimes no longer match.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

BASE_NAME = "mailhost-index"
LOG_NAME = "mailhost-index.log"
_MAGIC = b"MHIDX1"
_TRAILER = b"\nMHEND\n"
# A directory mtime recorded less than this before the index was taken may hide a change made
# in the same clock tick (also covers some clock skew between hosts sharing the volume).
RACY_SECONDS = 2.0
# Compact when the log holds this many lines (usage reads the whole log).
COMPACT_LOG_LINES = 512
SUBDIRS = ("new", "cur")
# Flag in ``Listing.subs``: a name without ``W=`` (written by another tool); its line endings
# may already be CRLF, so its wire size was counted from the contents.
FOREIGN = 2


@dataclass(slots=True)
class Listing:
    """The messages of a Maildir as parallel arrays (no object per message), POP3 order."""

    names: list[str]
    subs: bytearray  # bit 0: in cur/ (else new/); bit 1: FOREIGN
    sizes: array[int]  # octets on disk
    wires: array[int]  # octets with CRLF line endings (counted once for foreign files)
    mtimes: array[float]  # delivery time (from the name, else the file's mtime)

    @classmethod
    def empty(cls) -> Listing:
        return cls([], bytearray(), array("q"), array("q"), array("d"))

    def __len__(self) -> int:
        return len(self.names)

    def append(self, flags: int, name: str, size: int, wire: int, mtime: float) -> None:
        self.names.append(name)
        self.subs.append(flags)
        self.sizes.append(size)
        self.wires.append(wire)
        self.mtimes.append(mtime)

    def sorted(self) -> Listing:
        """Oldest first by delivery time, then name (the order POP3 numbers messages)."""
        order = sorted(range(len(self.names)), key=lambda i: (self.mtimes[i], self.names[i]))
        return Listing(
            [self.names[i] for i in order],
            bytearray(self.subs[i] for i in order),
            array("q", (self.sizes[i] for i in order)),
            array("q", (self.wires[i] for i in order)),
            array("d", (self.mtimes[i] for i in order)),
        )

    def path(self, maildir: Path, i: int) -> Path:
        return maildir / SUBDIRS[self.subs[i] & 1] / self.names[i]

    def name(self, i: int) -> str:
        return self.names[i]

    def foreign(self, i: int) -> bool:
        return bool(self.subs[i] & FOREIGN)


@dataclass(slots=True)
class PackedListing:
    """A listing kept for a whole session (POP3): the names in one bytes object with their
    end offsets instead of one string per message.  Seven objects for any mailbox size, so a
    session on 50,000 messages leaves no small objects behind that would pin the
    allocator's arenas after logout; a name is decoded when asked for."""

    blob: bytes  # the names, "\n"-separated, UTF-8 with surrogate escapes
    ends: array[int]  # ends[i]: offset just past name i's separator
    subs: bytearray
    sizes: array[int]
    wires: array[int]
    mtimes: array[float]

    @classmethod
    def pack(cls, listing: Listing) -> PackedListing:
        blob = "\n".join(listing.names).encode("utf-8", "surrogateescape")
        return cls.of_blob(blob, listing.subs, listing.sizes, listing.wires, listing.mtimes)

    @classmethod
    def of_blob(
        cls,
        blob: bytes,
        subs: bytearray,
        sizes: array[int],
        wires: array[int],
        mtimes: array[float],
    ) -> PackedListing:
        ends = array("q")
        if subs:
            # The split's pieces are freed at once (nothing else is made meanwhile), so they
            # leave no arena half full; 8 ms for 50,000 names, a find() loop took 10 ms.
            ends = array("q", itertools.accumulate(len(part) + 1 for part in blob.split(b"\n")))
        return cls(blob, ends, subs, sizes, wires, mtimes)

    def __len__(self) -> int:
        return len(self.subs)

    def name(self, i: int) -> str:
        start = self.ends[i - 1] if i else 0
        return self.blob[start : self.ends[i] - 1].decode("utf-8", "surrogateescape")

    def path(self, maildir: Path, i: int) -> Path:
        return maildir / SUBDIRS[self.subs[i] & 1] / self.name(i)

    def foreign(self, i: int) -> bool:
        return bool(self.subs[i] & FOREIGN)


# Parses one directory entry: (flags, size, wire, mtime), or None when it is not a message.
EntryParser = Callable[["os.DirEntry[str]"], "tuple[int, int, int, float] | None"]


@dataclass(slots=True)
class _Base:
    generation: int
    mtimes: tuple[int, int]
    taken_ns: int
    listing: Listing


def _dir_mtimes(maildir: Path) -> tuple[int, int]:
    out = []
    for sub in SUBDIRS:
        try:
            out.append(os.stat(maildir / sub).st_mtime_ns)
        except FileNotFoundError:
            out.append(0)
    return out[0], out[1]


@contextlib.contextmanager
def locked(maildir: Path) -> Iterator[None]:
    """Exclusive ``flock`` on the Maildir directory (writers of the index only)."""
    fd = os.open(maildir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # drops the lock


# ------------------------------------------------------------------------------ base file
def _header(base: _Base, names: bytes) -> bytes:
    n = len(base.listing)
    total = sum(base.listing.sizes)
    fields = (base.generation, n, *base.mtimes, base.taken_ns, total, len(names))
    return _MAGIC + b" " + b" ".join(b"%d" % f for f in fields) + b"\n"


def _write_base(maildir: Path, base: _Base) -> None:
    listing = base.listing
    names = "\n".join(listing.names).encode("utf-8", "surrogateescape")
    tmp = maildir / f".{BASE_NAME}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(_header(base, names))
        fh.write(listing.sizes.tobytes())
        fh.write(listing.wires.tobytes())
        fh.write(listing.mtimes.tobytes())
        fh.write(bytes(listing.subs))
        fh.write(names)
        fh.write(_TRAILER)
    os.replace(tmp, maildir / BASE_NAME)


def _read_header(data: bytes) -> tuple[int, int, tuple[int, int], int, int, int, int] | None:
    line, newline, _ = data.partition(b"\n")
    parts = line.split(b" ")
    if not newline or len(parts) != 8 or parts[0] != _MAGIC:
        return None
    try:
        gen, n, m_new, m_cur, taken, total, names_len = (int(p) for p in parts[1:])
    except ValueError:
        return None
    return gen, n, (m_new, m_cur), taken, total, names_len, len(line) + 1


_RawBase: TypeAlias = (
    "tuple[int, tuple[int, int], int, array[int], array[int], array[float], bytearray, bytes]"
)


def _read_base_raw(maildir: Path) -> _RawBase | None:
    """(generation, mtimes, taken, sizes, wires, stamps, subs, names blob) of the base, names
    not decoded; None when missing or damaged (then it is rebuilt)."""
    try:
        data = (maildir / BASE_NAME).read_bytes()
    except FileNotFoundError:
        return None
    header = _read_header(data)
    if header is None:
        return None
    gen, n, mtimes, taken, _total, names_len, pos = header
    end = pos + 25 * n + names_len
    if len(data) != end + len(_TRAILER) or not data.endswith(_TRAILER):
        return None
    sizes, wires, stamps = array("q"), array("q"), array("d")
    sizes.frombytes(data[pos : pos + 8 * n])
    wires.frombytes(data[pos + 8 * n : pos + 16 * n])
    stamps.frombytes(data[pos + 16 * n : pos + 24 * n])
    subs = bytearray(data[pos + 24 * n : pos + 25 * n])
    blob = data[pos + 25 * n : end]
    if blob.count(b"\n") != max(n - 1, 0) or (not n and blob):
        return None
    return gen, mtimes, taken, sizes, wires, stamps, subs, blob


def _read_base(maildir: Path) -> _Base | None:
    """The base, or None when missing or damaged (then it is rebuilt)."""
    raw = _read_base_raw(maildir)
    if raw is None:
        return None
    gen, mtimes, taken, sizes, wires, stamps, subs, blob = raw
    names = blob.decode("utf-8", "surrogateescape").split("\n") if subs else []
    return _Base(gen, mtimes, taken, Listing(names, subs, sizes, wires, stamps))


def _read_base_totals(maildir: Path) -> tuple[int, tuple[int, int], int, int] | None:
    """(generation, mtimes, bytes, messages) from the base's first line only."""
    try:
        with open(maildir / BASE_NAME, "rb") as fh:
            head = fh.readline(256)
    except FileNotFoundError:
        return None
    header = _read_header(head)
    if header is None:
        return None
    gen, n, mtimes, _taken, total, _names_len, _pos = header
    return gen, mtimes, total, n


# ------------------------------------------------------------------------------ log file
@dataclass(slots=True)
class _Log:
    added: list[tuple[int, str, int, int, float]]  # sub, name, size, wire, mtime
    removed: list[tuple[str, int]]  # name, size
    delta_bytes: int
    delta_messages: int
    last_mtimes: tuple[int, int] | None
    lines: int


def _read_log(maildir: Path, generation: int) -> _Log:
    """The changes since base ``generation`` (a log of another generation counts as empty)."""
    log = _Log([], [], 0, 0, None, 0)
    try:
        data = (maildir / LOG_NAME).read_bytes()
    except FileNotFoundError:
        return log
    first, _, rest = data.partition(b"\n")
    if first != b"gen %d" % generation:
        return log
    # A line cut short by a crash has no newline: ignored (the mtimes then disagree).
    for raw in rest.split(b"\n")[:-1]:
        fields = raw.decode("utf-8", "surrogateescape").split("\t")
        try:
            if fields[0] == "+" and len(fields) == 8:
                sub, size, wire = int(fields[1]), int(fields[2]), int(fields[3])
                log.added.append((sub, fields[5], size, wire, float(fields[4])))
                log.delta_bytes += size
                log.delta_messages += 1
            elif fields[0] == "-" and len(fields) == 5:
                size = int(fields[2])
                log.removed.append((fields[1], size))
                log.delta_bytes -= size
                log.delta_messages -= 1
            else:
                continue
            log.last_mtimes = (int(fields[-2]), int(fields[-1]))
            log.lines += 1
        except ValueError:
            continue
    return log


def _append_log(maildir: Path, lines: Sequence[str]) -> None:
    """Append change lines (caller holds the lock) with the directory mtimes after them."""
    base = _read_base_totals(maildir)
    if base is None:
        return  # no index yet: the next reader builds one from the directory
    generation = base[0]
    m_new, m_cur = _dir_mtimes(maildir)
    path = maildir / LOG_NAME
    payload = "".join(f"{line}\t{m_new}\t{m_cur}\n" for line in lines)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_size == 0 or not _log_matches(path, generation):
            os.ftruncate(fd, 0)
            payload = f"gen {generation}\n" + payload
        os.write(fd, payload.encode("utf-8", "surrogateescape"))
    finally:
        os.close(fd)


def _log_matches(path: Path, generation: int) -> bool:
    with open(path, "rb") as fh:
        return fh.readline(64) == b"gen %d\n" % generation


def _fresh_log(maildir: Path, generation: int) -> None:
    tmp = maildir / f".{LOG_NAME}.{os.getpid()}.tmp"
    tmp.write_bytes(b"gen %d\n" % generation)
    os.replace(tmp, maildir / LOG_NAME)


# ------------------------------------------------------------------------------ operations
def _indexable(name: str) -> bool:
    return "\n" not in name and "\t" not in name


def note_added(maildir: Path, entries: Sequence[tuple[str, int, int, float]]) -> None:
    """Note messages just renamed into ``new/``: (name, size, wire size, delivery time).

    The caller holds :func:`locked` across its rename *and* this call, so a compaction never
    falls between them (it would count the message in the base and again in the log).
    """
    lines = [
        f"+\t0\t{size}\t{wire}\t{stamp!r}\t{name}"
        for name, size, wire, stamp in entries
        if _indexable(name)
    ]
    if lines:
        _append_log(maildir, lines)


def note_removed(maildir: Path, entries: Sequence[tuple[str, int]]) -> None:
    """Note messages just unlinked: (file name, size on disk); the caller holds the lock
    across the unlinks and this call."""
    lines = [f"-\t{name}\t{size}" for name, size in entries if _indexable(name)]
    if lines:
        _append_log(maildir, lines)


def _apply_log(listing: Listing, log: _Log) -> Listing:
    if not log.added and not log.removed:
        return listing
    gone = {name for name, _ in log.removed}
    out = Listing.empty()
    for i, name in enumerate(listing.names):
        if name not in gone:
            out.append(listing.subs[i], name, listing.sizes[i], listing.wires[i], listing.mtimes[i])
    known = set(out.names)
    for sub, name, size, wire, stamp in log.added:
        if name not in gone and name not in known:
            out.append(sub, name, size, wire, stamp)
            known.add(name)
    return out


def _rescan(maildir: Path, cached: Listing, parse: EntryParser) -> tuple[Listing, bool]:
    """The directory's messages, reusing ``cached`` for names it knows; (listing, changed)."""
    known: dict[tuple[int, str], int] = {
        (cached.subs[i] & 1, name): i for i, name in enumerate(cached.names)
    }
    out = Listing.empty()
    changed = False
    seen = 0
    for sub, subdir in enumerate(SUBDIRS):
        try:
            entries = list(os.scandir(maildir / subdir))
        except FileNotFoundError:
            continue
        for entry in entries:
            name = entry.name
            i = known.get((sub, name))
            if i is not None:
                seen += 1
                flags = cached.subs[i]
                out.append(flags, name, cached.sizes[i], cached.wires[i], cached.mtimes[i])
                continue
            if name.startswith(".") or not _indexable(name):
                continue
            parsed = parse(entry)
            if parsed is None:
                continue
            changed = True
            flags, size, wire, stamp = parsed
            out.append(sub | flags, name, size, wire, stamp)
    if seen != len(cached):
        changed = True
    # Unchanged: the cached listing is already in POP3 order.
    return (out.sorted() if changed else cached), changed


def _trusted(maildir: Path, generation: int, mtimes: tuple[int, int], taken_ns: int) -> bool:
    """Whether a base may be used without reading the directories (see the module doc)."""
    log = _read_log(maildir, generation)
    recorded = log.last_mtimes or mtimes
    settled = max(mtimes) < taken_ns - int(RACY_SECONDS * 1e9)
    return not log.lines and recorded == _dir_mtimes(maildir) and settled


def load_packed(
    maildir: Path, parse: EntryParser, *, clock: Callable[[], float] = time.time
) -> PackedListing:
    """Like :func:`load`, packed for keeping; from a trusted base no name is decoded."""
    raw = _read_base_raw(maildir)
    if raw is not None and _trusted(maildir, raw[0], raw[1], raw[2]):
        _gen, _mtimes, _taken, sizes, wires, stamps, subs, blob = raw
        return PackedListing.of_blob(blob, subs, sizes, wires, stamps)
    return PackedListing.pack(load(maildir, parse, clock=clock))


def load(maildir: Path, parse: EntryParser, *, clock: Callable[[], float] = time.time) -> Listing:
    """Every message of the Maildir, exact: from the index when it can be trusted, else from
    the directory (reusing what the index knows), and then the index is brought up to date."""
    base = _read_base(maildir)
    if base is not None and _trusted(maildir, base.generation, base.mtimes, base.taken_ns):
        return base.listing
    with locked(maildir):
        # Again under the lock: a writer may have compacted meanwhile.
        base = _read_base(maildir)
        cached = Listing.empty()
        generation = 0
        if base is not None:
            log = _read_log(maildir, base.generation)
            cached = _apply_log(base.listing, log).sorted() if log.lines else base.listing
            generation = base.generation
        taken_ns = int(clock() * 1e9)
        mtimes = _dir_mtimes(maildir)  # before listing: a later change shows as a new mtime
        listing, _ = _rescan(maildir, cached, parse)
        new_base = _Base(generation + 1, mtimes, taken_ns, listing)
        with contextlib.suppress(OSError):  # a read-only Maildir still lists
            _write_base(maildir, new_base)
            _fresh_log(maildir, new_base.generation)
    return listing


def usage(
    maildir: Path, parse: EntryParser, *, clock: Callable[[], float] = time.time
) -> tuple[int, int]:
    """(bytes, messages) from the base's totals and the log: no listing while it is valid."""
    totals = _read_base_totals(maildir)
    if totals is not None:
        generation, base_mtimes, total, count = totals
        log = _read_log(maildir, generation)
        if (log.last_mtimes or base_mtimes) == _dir_mtimes(maildir) and (
            log.lines < COMPACT_LOG_LINES
        ):
            return total + log.delta_bytes, count + log.delta_messages
    listing = load(maildir, parse, clock=clock)
    return sum(listing.sizes), len(listing)
