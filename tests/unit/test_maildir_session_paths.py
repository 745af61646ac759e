"""The store's POP3 session paths: packed listings, whole reads of listed messages, and an
expunge that keeps going past a file it cannot remove."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from app import maildir_index
from app.maildir import MailboxRef, MaildirError, MaildirStore
from tests.fs_helpers import undeletable

ALICE = MailboxRef("hosted.example", "alice")


@pytest.fixture
def mstore(tmp_path: Path) -> MaildirStore:
    return MaildirStore(tmp_path / "mail", hostname="mx1", fsync=False)


def _age_directories(maildir: Path, seconds: float = 10.0) -> None:
    then = time.time() - seconds
    for sub in ("new", "cur"):
        os.utime(maildir / sub, (then, then))


def _same(packed: maildir_index.PackedListing, listing: maildir_index.Listing) -> None:
    assert len(packed) == len(listing)
    assert [packed.name(i) for i in range(len(packed))] == listing.names
    assert list(packed.sizes) == list(listing.sizes)
    assert list(packed.wires) == list(listing.wires)
    assert bytes(packed.subs) == bytes(listing.subs)


def test_packed_listing_matches_the_listing_from_a_fresh_and_a_trusted_index(
    mstore: MaildirStore,
) -> None:
    mstore.deliver([(ALICE, [b"Subject: %d\n\nbody\n" % i]) for i in range(5)])
    maildir = mstore.ensure(ALICE)
    # A foreign name with non-UTF-8 bytes (surrogate-escaped) and one in cur/ with flags.
    (maildir / "cur" / "1.V1I2M3.other:2,S").write_bytes(b"a\r\nb\n")
    (maildir / "new" / os.fsdecode(b"2.V1I3M4.h\xff")).write_bytes(b"x\n")
    path, fresh = mstore.packed_listing(ALICE)  # the directories changed: a rescan
    _, listing = mstore.listing(ALICE)
    _same(fresh, listing)
    assert path == maildir
    _age_directories(maildir)
    mstore.listing(ALICE)  # compacts with settled mtimes: the next load trusts the base
    trusted = maildir_index.load_packed(maildir, lambda entry: None)  # never parses
    _same(trusted, mstore.listing(ALICE)[1])
    assert trusted.path(maildir, 0) == listing.path(maildir, 0)
    empty = mstore.packed_listing(MailboxRef("hosted.example", "nobody"))[1]
    assert len(empty) == 0


def test_read_listed_reads_the_whole_file_even_if_it_grew(mstore: MaildirStore) -> None:
    [info] = mstore.deliver([(ALICE, [b"Subject: x\n\n" + b"y" * 5000 + b"\n"])])
    maildir, packed = mstore.packed_listing(ALICE)
    assert mstore.read_listed(maildir, packed, 0) == info.path.read_bytes()
    with open(info.path, "ab") as fh:  # another tool appended since the listing
        fh.write(b"z" * 200_000)
    assert mstore.read_listed(maildir, packed, 0) == info.path.read_bytes()
    info.path.unlink()
    with pytest.raises(FileNotFoundError):
        mstore.read_listed(maildir, packed, 0)


def test_read_listed_refuses_a_listing_outside_the_root(
    mstore: MaildirStore, tmp_path: Path
) -> None:
    mstore.deliver([(ALICE, [b"x\n"])])
    _, packed = mstore.packed_listing(ALICE)
    with pytest.raises(MaildirError):
        mstore.read_listed(tmp_path / "elsewhere", packed, 0)


def test_expunge_removes_the_rest_when_one_file_cannot_be_removed(mstore: MaildirStore) -> None:
    """RFC 1939 section 6: QUIT then answers -ERR, and what was deleted stays deleted; the
    failure in the middle must not leave the later messages behind (nor un-fsync'd)."""
    first, second = mstore.deliver([(ALICE, [b"1\n"]), (ALICE, [b"2\n"])])
    maildir = mstore.ensure(ALICE)
    (maildir / "cur" / "5.V1I1M1.other:2,S").write_bytes(b"3\n")
    listed = {m.path.name: m for m in mstore.list_messages(ALICE)}
    stuck = listed["5.V1I1M1.other:2,S"]
    order = [listed[first.path.name], stuck, listed[second.path.name]]
    with undeletable(maildir / "cur"), pytest.raises(OSError):
        mstore.expunge(ALICE, order)
    assert [m.path.name for m in mstore.list_messages(ALICE)] == [stuck.path.name]
    assert mstore.usage(ALICE).messages == 1
