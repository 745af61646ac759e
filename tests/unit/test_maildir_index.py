"""The per-Maildir index (app/maildir_index.py): built, updated, stale, rebuilt, crashes."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from app import maildir_index
from app.maildir import MailboxRef, MaildirStore

ALICE = MailboxRef("hosted.example", "alice")
BODY = b"Subject: hi\n\nline one\nline two\n"
FOREIGN = b"Subject: from postfix\r\n\r\nalready CRLF\r\nand a bare LF\n"


@pytest.fixture
def mstore(tmp_path: Path) -> MaildirStore:
    return MaildirStore(tmp_path / "mail", hostname="mx1", fsync=False)


def _maildir(store: MaildirStore) -> Path:
    return store.mailbox_path(ALICE)


def _truth(store: MaildirStore) -> list[tuple[str, int, int | None]]:
    return [(m.path.name, m.size, m.wire_size) for m in store.scan_messages(ALICE)]


def _listed(store: MaildirStore) -> list[tuple[str, int, int | None]]:
    return [(m.path.name, m.size, m.wire_size) for m in store.list_messages(ALICE)]


def _age_directories(maildir: Path, seconds: float = 10.0) -> None:
    """Make the last change look old (as if the Maildir had been quiet for a while)."""
    then = time.time() - seconds
    for sub in ("new", "cur"):
        os.utime(maildir / sub, (then, then))


def _foreign(maildir: Path, name: str, data: bytes = FOREIGN, sub: str = "new") -> Path:
    path = maildir / sub / name
    path.write_bytes(data)
    return path


def test_first_listing_builds_the_index_and_later_ones_use_it(mstore: MaildirStore) -> None:
    mstore.deliver([(ALICE, [BODY])] * 3)
    maildir = _maildir(mstore)
    assert not (maildir / maildir_index.BASE_NAME).exists()  # built by the first reader
    assert _listed(mstore) == _truth(mstore)
    assert (maildir / maildir_index.BASE_NAME).exists()
    _age_directories(maildir)
    mstore.list_messages(ALICE)  # settles: the index was taken well after the last change
    # A settled index is trusted without reading the directory: a file slipped in while the
    # directory keeps its mtime is not seen (what the mtime check is for; see the next tests).
    stamp = os.stat(maildir / "new").st_mtime_ns
    _foreign(maildir, "1700000000.hidden.example")
    os.utime(maildir / "new", ns=(stamp, stamp))
    assert len(mstore.list_messages(ALICE)) == 3
    assert mstore.usage(ALICE).messages == 3


def test_delivery_and_expunge_update_usage_without_a_listing(mstore: MaildirStore) -> None:
    mstore.deliver([(ALICE, [BODY])] * 2)
    assert mstore.usage(ALICE).messages == 2  # builds the index
    maildir = _maildir(mstore)
    [info] = mstore.deliver([(ALICE, [BODY * 3])])
    log = (maildir / maildir_index.LOG_NAME).read_text()
    assert info.path.name in log and log.count("\n") == 2  # generation line + one "+"
    assert mstore.usage(ALICE).bytes == 2 * len(BODY) + 3 * len(BODY)
    first = mstore.list_messages(ALICE)[0]
    assert mstore.expunge(ALICE, [first]) == 1
    assert mstore.usage(ALICE).messages == 2
    assert mstore.usage(ALICE).bytes == len(BODY) + 3 * len(BODY)
    assert _listed(mstore) == _truth(mstore)
    # The listing compacted the log into the base.
    assert (maildir / maildir_index.LOG_NAME).read_text().count("\n") == 1


@pytest.mark.parametrize("change", ["add to new", "add to cur", "remove", "move to cur"])
def test_foreign_changes_make_the_index_stale_and_it_is_rebuilt(
    mstore: MaildirStore, change: str
) -> None:
    mstore.deliver([(ALICE, [BODY])] * 3)
    maildir = _maildir(mstore)
    assert mstore.usage(ALICE).messages == 3
    _age_directories(maildir)
    mstore.list_messages(ALICE)  # settled index
    victim = mstore.list_messages(ALICE)[1].path
    if change == "add to new":
        _foreign(maildir, "1700000001.V801I2M3.postfix.example")
    elif change == "add to cur":
        _foreign(maildir, "1700000001.M1P2.dovecot.example:2,S", sub="cur")
    elif change == "remove":
        victim.unlink()
    else:
        victim.rename(maildir / "cur" / f"{victim.name}:2,S")
    expected = {"add to new": 4, "add to cur": 4, "remove": 2, "move to cur": 3}[change]
    assert mstore.usage(ALICE).messages == expected
    assert _listed(mstore) == _truth(mstore)
    assert len(_truth(mstore)) == expected


def test_foreign_files_are_counted_once_with_crlf_and_kept_in_the_index(
    mstore: MaildirStore,
) -> None:
    mstore.deliver([(ALICE, [BODY])])
    maildir = _maildir(mstore)
    path = _foreign(maildir, "1700000002.V801I2M3.postfix.example")
    path_size = len(FOREIGN)
    _, listing = mstore.listing(ALICE)
    i = listing.names.index(path.name)
    # RFC 1939 sizes are with CRLF: the bare LF at the end counts two octets, CRLFs two.
    assert listing.foreign(i)
    assert listing.wires[i] == len(FOREIGN.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"))
    assert listing.sizes[i] == path_size
    # Wire size reused from the index: changing the file behind its back does not re-count.
    path.write_bytes(FOREIGN * 2)
    os.utime(maildir / "new", ns=(0, 0))  # but a directory change makes it re-list...
    _, again = mstore.listing(ALICE)
    j = again.names.index(path.name)
    assert again.wires[j] == listing.wires[i]  # ...reusing known names (never parsed twice)


def test_racy_index_is_checked_against_the_directory(mstore: MaildirStore) -> None:
    """A foreign file written in the same clock tick as our last change (mtime unchanged) is
    still listed: a recent index is compared with the directory before it is trusted."""
    mstore.deliver([(ALICE, [BODY])])
    maildir = _maildir(mstore)
    mstore.list_messages(ALICE)
    stamp = os.stat(maildir / "new").st_mtime_ns
    _foreign(maildir, "1700000003.V801I2M3.postfix.example")
    os.utime(maildir / "new", ns=(stamp, stamp))
    assert len(mstore.list_messages(ALICE)) == 2


def test_damaged_index_files_are_rebuilt(mstore: MaildirStore) -> None:
    mstore.deliver([(ALICE, [BODY])] * 4)
    maildir = _maildir(mstore)
    mstore.list_messages(ALICE)
    base = maildir / maildir_index.BASE_NAME
    for damage in (b"", base.read_bytes()[:-3], b"MHIDX1 garbage\n", os.urandom(200)):
        base.write_bytes(damage)
        assert _listed(mstore) == _truth(mstore)
        assert mstore.usage(ALICE).messages == 4


def test_crash_states_leave_a_usable_index(mstore: MaildirStore) -> None:
    mstore.deliver([(ALICE, [BODY])] * 2)
    maildir = _maildir(mstore)
    assert mstore.usage(ALICE).messages == 2
    log = maildir / maildir_index.LOG_NAME
    # 1. A writer killed after its rename into new/ but before noting it in the index.
    name = f"{int(time.time())}.M1P1Q1.mx1,S={len(BODY)},W={len(BODY) + 4}"
    (maildir / "tmp" / name).write_bytes(BODY)
    os.rename(maildir / "tmp" / name, maildir / "new" / name)
    assert mstore.usage(ALICE).messages == 3
    # 2. A writer killed in the middle of appending its log line (no newline written).
    with open(log, "ab") as fh:
        fh.write(b"+\t0\t99999\t99999\t1.0\tcut-short")
    [extra] = mstore.deliver([(ALICE, [BODY])])
    assert mstore.usage(ALICE).messages == 4
    assert mstore.usage(ALICE).bytes == 4 * len(BODY)
    assert _listed(mstore) == _truth(mstore)
    # 3. Killed between writing base g+1 and the fresh log g+1: the old log (already folded
    # into the base) is ignored, not counted twice.
    generation = int((maildir / maildir_index.BASE_NAME).read_bytes().split(b" ")[1])
    log.write_text(f"gen {generation - 1}\n+\t0\t5\t6\t1.0\told\t0\t0\n")
    assert mstore.usage(ALICE).messages == 4
    # 4. A leftover temporary file of an interrupted rewrite is not a message.
    (maildir / f".{maildir_index.BASE_NAME}.4242.tmp").write_bytes(b"half")
    assert mstore.expunge(ALICE, [extra]) == 1
    assert _listed(mstore) == _truth(mstore)
    assert mstore.usage(ALICE).messages == 3


def _deliver_many(root: str, count: int) -> None:
    store = MaildirStore(Path(root), hostname="mx2", fsync=False)
    for _ in range(count):
        store.deliver([(ALICE, [BODY])])


def test_concurrent_delivery_and_expunge_lose_no_entry(mstore: MaildirStore) -> None:
    """Two other processes deliver while this one expunges and lists: at the end the index
    agrees with the directory, entry for entry, and usage with the files."""
    mstore.deliver([(ALICE, [BODY])] * 150)
    assert mstore.usage(ALICE).messages == 150
    doomed = mstore.list_messages(ALICE)
    ctx = multiprocessing.get_context("fork")
    writers = [ctx.Process(target=_deliver_many, args=(str(mstore.root), 150)) for _ in range(2)]
    for p in writers:
        p.start()
    listed: list[int] = []

    def reader() -> None:
        other = MaildirStore(mstore.root, hostname="mx3", fsync=False)
        while any(p.is_alive() for p in writers):
            listed.append(len(other.list_messages(ALICE)))
            other.usage(ALICE)

    thread = threading.Thread(target=reader)
    thread.start()
    removed = 0
    for i in range(0, 150, 10):
        removed += mstore.expunge(ALICE, doomed[i : i + 10])
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    thread.join(60)
    assert removed == 150
    assert listed  # the reader ran alongside
    truth = _truth(mstore)
    assert len(truth) == 300
    assert mstore.usage(ALICE).messages == 300
    assert mstore.usage(ALICE).bytes == 300 * len(BODY)
    assert _listed(mstore) == truth
