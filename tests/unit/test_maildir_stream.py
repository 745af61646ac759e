"""Streamed delivery (``app.maildir_stream``) on a temp dir: in-memory and spilled bodies,
the copies' names and sizes, all-or-nothing across recipients, and the spill file's removal."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from app import maildir_index
from app.maildir import MailboxRef, MaildirError, MaildirStore, Usage
from app.maildir_files import lf_to_wire_size
from app.maildir_stream import SpooledBody, deliver_spooled, spool_body

ALICE = MailboxRef("hosted.example", "alice")
BOB = MailboxRef("hosted.example", "bob")
CAROL = MailboxRef("other.example", "carol")
NAME = re.compile(r"^(\d+)\.M(\d+)P(\d+)Q(\d+)\.([^,:/]+),S=(\d+),W=(\d+)$")


@pytest.fixture
def mstore(tmp_path: Path) -> MaildirStore:
    return MaildirStore(tmp_path / "mail", hostname="mx1")


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def _body_pieces(total: int) -> list[bytes]:
    # Distinct lines so a misplaced or repeated block shows in the comparison.
    lines = b"".join(b"line %08d\n" % i for i in range(total // 14 + 1))
    data = lines[:total]
    return [data[i : i + 70_001] for i in range(0, len(data), 70_001)]


def _stream(mstore: MaildirStore, pieces: list[bytes], *, memory_limit: int) -> SpooledBody:
    body = spool_body(mstore, ALICE, memory_limit=memory_limit)
    for piece in pieces:
        body.append(piece)
        if body.needs_flush:
            body.flush()
    return body


@pytest.mark.parametrize("size", [0, 10, 300_000, 3_000_000])
def test_each_copy_is_header_plus_body_with_deliver_names(mstore: MaildirStore, size: int) -> None:
    pieces = _body_pieces(size)
    expected_body = b"".join(pieces)
    body = _stream(mstore, pieces, memory_limit=256 * 1024)
    assert body.spilled == (size > 256 * 1024)
    headers = [b"Delivered-To: alice\n", b"Delivered-To: bob\n", b"Delivered-To: carol\n"]
    for ref in (ALICE, BOB, CAROL):  # indexed before: the delivery must note itself
        mstore.ensure(ref)
        assert mstore.list_messages(ref) == []
    infos = deliver_spooled(mstore, list(zip([ALICE, BOB, CAROL], headers, strict=True)), body)
    for ref, header, info in zip([ALICE, BOB, CAROL], headers, infos, strict=True):
        # Published through the store: the Maildir index noted it, so usage needs no listing.
        log = mstore.mailbox_path(ref) / maildir_index.LOG_NAME
        assert info.path.name.encode() in log.read_bytes()
        assert mstore.usage(ref) == Usage(bytes=len(header) + len(expected_body), messages=1)
    for ref, header, info in zip([ALICE, BOB, CAROL], headers, infos, strict=True):
        content = header + expected_body
        assert info.path.read_bytes() == content
        match = NAME.match(info.path.name)
        assert match is not None, info.path.name
        assert int(match.group(6)) == len(content) == info.size
        assert int(match.group(7)) == lf_to_wire_size(content) == info.wire_size
        root = mstore.mailbox_path(ref)
        assert info.path.parent == root / "new"
        assert _files(root / "tmp") == []  # the spill file went with the delivery
        assert [m.uid for m in mstore.list_messages(ref)] == [info.uid]


def test_a_failed_copy_leaves_nothing_anywhere(mstore: MaildirStore) -> None:
    body = _stream(mstore, _body_pieces(1_000_000), memory_limit=64 * 1024)
    assert body.spilled
    broken = mstore.ensure(CAROL)
    (broken / "new").rmdir()
    (broken / "new").write_bytes(b"")  # rename into it fails with ENOTDIR, also as root
    copies = [(ALICE, b"H: a\n"), (BOB, b"H: b\n"), (CAROL, b"H: c\n")]
    with pytest.raises(NotADirectoryError):
        deliver_spooled(mstore, copies, body)
    for ref in (ALICE, BOB, CAROL):
        root = mstore.mailbox_path(ref)
        assert _files(root / "tmp") == []
        if ref != CAROL:
            assert _files(root / "new") == []
    # A retry of the whole transaction (the sender's, after 451) stores each copy once.
    (broken / "new").unlink()
    (broken / "new").mkdir()
    again = _stream(mstore, _body_pieces(1_000_000), memory_limit=64 * 1024)
    deliver_spooled(mstore, copies, again)
    assert [mstore.usage(r).messages for r in (ALICE, BOB, CAROL)] == [1, 1, 1]


def test_write_failure_in_a_copy_removes_everything(
    mstore: MaildirStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = _stream(mstore, _body_pieces(600_000), memory_limit=64 * 1024)
    real_fsync = os.fsync
    calls = []

    def fail_second(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fail_second)
    with pytest.raises(OSError, match="No space"):
        deliver_spooled(mstore, [(ALICE, b"A\n"), (BOB, b"B\n")], body)
    monkeypatch.undo()
    for ref in (ALICE, BOB):
        root = mstore.mailbox_path(ref)
        assert _files(root / "tmp") == [] and _files(root / "new") == []


def test_discard_removes_the_spill_file_and_refuses_more(mstore: MaildirStore) -> None:
    body = _stream(mstore, _body_pieces(500_000), memory_limit=64 * 1024)
    tmp = mstore.mailbox_path(ALICE) / "tmp"
    [spill] = _files(tmp)
    assert spill.endswith(",spool") and (tmp / spill).stat().st_size == body.size - len(
        b"".join(body.buffered_chunks)
    )
    body.discard()
    body.discard()  # idempotent (the protocol may abort twice: deadline, then connection lost)
    assert _files(tmp) == []
    body.append(b"late\n")
    with pytest.raises(MaildirError, match="discarded"):
        body.flush()
    assert _files(tmp) == []


def test_spill_file_of_a_crash_is_stale_tmp_debris(mstore: MaildirStore) -> None:
    body = _stream(mstore, _body_pieces(500_000), memory_limit=64 * 1024)
    tmp = mstore.mailbox_path(ALICE) / "tmp"
    [spill] = _files(tmp)
    assert mstore.clean_tmp() == 0  # being written: never removed
    old = time.time() - 7200
    os.utime(tmp / spill, (old, old))
    assert mstore.clean_tmp() == 1
    assert _files(tmp) == []
    body.discard()  # the file is gone already: no error


def test_spill_survives_its_maildir_being_removed(mstore: MaildirStore) -> None:
    # The first recipient's mailbox is deleted while the body arrives: the open spill file
    # still holds the body, and the other copies are stored (the edge then drops ALICE's).
    body = _stream(mstore, _body_pieces(400_000), memory_limit=64 * 1024)
    MaildirStore(mstore.root, hostname="other").remove_mailbox(ALICE)
    body.append(b"tail\n")
    body.flush()
    infos = deliver_spooled(mstore, [(BOB, b"B\n"), (ALICE, b"A\n")], body)
    assert infos[0].path.read_bytes() == b"B\n" + b"".join(_body_pieces(400_000)) + b"tail\n"


def test_discard_during_delivery_leaves_the_delivery_alone(mstore: MaildirStore) -> None:
    # The client is gone while the copies are written: the edge's discard must neither
    # close the descriptor being copied from nor remove the spill file under the delivery.
    body = _stream(mstore, _body_pieces(500_000), memory_limit=64 * 1024)
    body.claim()
    body.discard()
    assert body.spilled
    body._release()
    assert not body.spilled and _files(mstore.mailbox_path(ALICE) / "tmp") == []
    discarded = _stream(mstore, _body_pieces(500_000), memory_limit=64 * 1024)
    discarded.discard()
    with pytest.raises(MaildirError, match="discarded"):
        deliver_spooled(mstore, [(BOB, b"B\n")], discarded)
    assert _files(mstore.mailbox_path(BOB) / "new") == []


def test_copy_falls_back_where_copy_file_range_cannot(
    mstore: MaildirStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Across file systems on old kernels (EXDEV) or where unsupported: plain reads and writes.
    def unsupported(*args: object) -> int:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", unsupported)
    pieces = _body_pieces(20_000_000)  # more than one copy chunk (8 MiB)
    body = _stream(mstore, pieces, memory_limit=256 * 1024)
    [info] = deliver_spooled(mstore, [(BOB, b"B\n")], body)
    assert info.path.read_bytes() == b"B\n" + b"".join(pieces)


def test_discard_if_in_memory_only_takes_the_cheap_case(mstore: MaildirStore) -> None:
    # What the SMTP edge drops on the event loop without a worker thread: a body that never
    # spilled. A spilled one, or one whose flush holds the lock, is left to discard().
    small = _stream(mstore, _body_pieces(10_000), memory_limit=64 * 1024)
    assert not small.spilled
    assert small.discard_if_in_memory() is True
    with pytest.raises(MaildirError, match="discarded"):
        small.flush()

    big = _stream(mstore, _body_pieces(500_000), memory_limit=64 * 1024)
    tmp = mstore.mailbox_path(ALICE) / "tmp"
    assert big.discard_if_in_memory() is False
    assert len(_files(tmp)) == 1  # untouched
    big.flush()  # still usable
    big.discard()
    assert _files(tmp) == []

    busy = _stream(mstore, _body_pieces(10_000), memory_limit=64 * 1024)
    with busy._lock:  # a flush in progress on a worker thread
        assert busy.discard_if_in_memory() is False
    busy.flush()  # not discarded
    assert busy.spilled
    busy.discard()
