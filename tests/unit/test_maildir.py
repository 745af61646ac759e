"""The Maildir store on a temp dir: delivery, names, foreign Maildirs, expunge, crash safety."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from app.maildir import MailboxRef, MaildirError, MaildirStore
from app.maildir_files import lf_to_wire_size, uid_from_name
from tests.fs_helpers import undeletable

ALICE = MailboxRef("hosted.example", "alice")
BOB = MailboxRef("hosted.example", "bob")
BODY = b"Subject: hi\n\nline one\nline two\n"
# Dovecot's form: {sec}.M{usec}P{pid}Q{n}.{host},S={size},W={wire}
NAME = re.compile(r"^(\d+)\.M(\d+)P(\d+)Q(\d+)\.([^,:/]+),S=(\d+),W=(\d+)$")


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.25) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mstore(tmp_path: Path, clock: FakeClock) -> MaildirStore:
    return MaildirStore(tmp_path / "mail", hostname="mx1/a:b,c", clock=clock)


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_delivery_layout_and_dovecot_name(mstore: MaildirStore, clock: FakeClock) -> None:
    [info] = mstore.deliver([(ALICE, [BODY[:10], BODY[10:]])])
    root = mstore.root / "hosted.example" / "alice"
    assert sorted(p.name for p in root.iterdir()) == ["cur", "new", "tmp"]
    assert _files(root / "tmp") == [] and _files(root / "cur") == []
    assert _files(root / "new") == [info.path.name]
    match = NAME.match(info.path.name)
    assert match, info.path.name
    sec, usec, pid, _, host, size, wire = match.groups()
    assert (int(sec), int(usec), int(pid)) == (1_700_000_000, 250_000, os.getpid())
    # '/', ':' and ',' in the host name are encoded as Dovecot does.
    assert host == r"mx1\057a\072b\054c"
    assert int(size) == len(BODY) == info.size
    assert int(wire) == len(BODY.replace(b"\n", b"\r\n")) == info.wire_size
    assert info.path.read_bytes() == BODY
    assert stat.S_IMODE(info.path.stat().st_mode) == 0o600
    assert info.uid == info.path.name.split(",")[0]


def test_names_are_unique_within_one_second(mstore: MaildirStore) -> None:
    infos = mstore.deliver([(ALICE, [BODY])] * 5)
    names = {i.path.name for i in infos}
    assert len(names) == 5
    assert len({i.uid for i in infos}) == 5


def test_several_recipients_each_get_a_copy(mstore: MaildirStore) -> None:
    infos = mstore.deliver([(ALICE, [BODY]), (BOB, [BODY])])
    assert [i.path.parent.parent.name for i in infos] == ["alice", "bob"]
    for ref in (ALICE, BOB):
        [message] = mstore.list_messages(ref)
        assert mstore.open_message(message).read() == BODY
        assert mstore.usage(ref).bytes == len(BODY)
        assert mstore.usage(ref).messages == 1


def test_listing_new_and_cur_with_foreign_files(mstore: MaildirStore) -> None:
    [ours] = mstore.deliver([(ALICE, [BODY])])
    root = mstore.ensure(ALICE)
    # Postfix names ({sec}.V{dev}I{ino}M{usec}.{host}) and Dovecot ones with flags, no S=/W=.
    postfix = root / "new" / "1600000000.V801I2a3fM123456.oldmx"
    postfix.write_bytes(b"Subject: a\r\n\r\nCRLF body\r\nbare LF line\n")
    flagged = root / "cur" / "1600000001.M1P2.oldimap:2,S"
    flagged.write_bytes(b"x\n" * 10)
    sized = root / "cur" / "1600000002.M1P3.oldimap,S=5,W=7:2,RS"
    sized.write_bytes(b"a\nb\nc")
    (root / "cur" / ".hidden").write_bytes(b"ignored")
    (root / "cur" / "subdir").mkdir()
    os.utime(postfix, (1_600_000_000, 1_600_000_000))
    os.utime(flagged, (1_600_000_001, 1_600_000_001))
    os.utime(sized, (1_600_000_002, 1_600_000_002))

    messages = mstore.list_messages(ALICE)
    assert [m.path.name for m in messages] == [
        postfix.name,
        flagged.name,
        sized.name,
        ours.path.name,
    ]
    by_name = {m.path.name: m for m in messages}
    assert by_name[flagged.name].uid == "1600000001.M1P2.oldimap"
    assert by_name[flagged.name].size == 20 and by_name[flagged.name].wire_size is None
    assert (by_name[sized.name].size, by_name[sized.name].wire_size) == (5, 7)
    # wire size of foreign files: CRLF stays, bare LF becomes CRLF.
    assert mstore.wire_size(by_name[postfix.name]) == len(postfix.read_bytes()) + 1
    assert mstore.wire_size(by_name[flagged.name]) == 30
    assert mstore.wire_size(by_name[sized.name]) == 7
    assert mstore.usage(ALICE).bytes == len(BODY) + len(postfix.read_bytes()) + 20 + 5
    assert mstore.usage(ALICE).messages == 4


def test_wire_size_counts_crlf_split_across_read_blocks(mstore: MaildirStore) -> None:
    root = mstore.ensure(ALICE)
    data = b"a" * ((1 << 20) - 1) + b"\r\n" + b"b\n"
    foreign = root / "cur" / "1.M1P1.foreign:2,"
    foreign.write_bytes(data)
    [message] = mstore.list_messages(ALICE)
    assert mstore.wire_size(message) == len(data) + 1


def test_lf_to_wire_size() -> None:
    assert lf_to_wire_size(b"") == 0
    assert lf_to_wire_size(b"a\nb\n") == 6


def test_uid_is_rfc1939_safe() -> None:
    assert uid_from_name("1.M2P3Q4.host,S=1,W=2:2,S") == "1.M2P3Q4.host"
    long_or_odd = uid_from_name("x" * 80)
    assert re.fullmatch(r"[0-9a-f]{40}", long_or_odd)
    assert re.fullmatch(r"[0-9a-f]{40}", uid_from_name("name with space"))


def test_expunge_removes_only_the_given_messages(mstore: MaildirStore) -> None:
    mstore.deliver([(ALICE, [b"1\n"]), (ALICE, [b"2\n"]), (ALICE, [b"3\n"])])
    flagged = mstore.ensure(ALICE) / "cur" / "99.M1P1.foreign:2,S"
    flagged.write_bytes(b"4\n")
    listed = mstore.list_messages(ALICE)
    by_uid = {m.uid: m for m in listed}
    first = listed[0] if listed[0].uid != "99.M1P1.foreign" else listed[1]
    removed = mstore.expunge(ALICE, [first, by_uid["99.M1P1.foreign"]])
    assert removed == 2
    assert [m.uid for m in mstore.list_messages(ALICE)] == [
        m.uid for m in listed if m.uid not in (first.uid, "99.M1P1.foreign")
    ]
    assert mstore.expunge(ALICE, [first]) == 0  # already gone
    assert mstore.usage(ALICE).messages == 2


def test_expunge_finds_a_message_renamed_since_the_listing(mstore: MaildirStore) -> None:
    [info] = mstore.deliver([(ALICE, [b"1\n"])])
    [listed] = mstore.list_messages(ALICE)
    # Another reader moves it from new/ to cur/ with flags (as Dovecot or mutt would).
    listed.path.rename(mstore.ensure(ALICE) / "cur" / (listed.path.name + ":2,S"))
    assert mstore.expunge(ALICE, [listed]) == 1
    assert mstore.list_messages(ALICE) == []


def test_listing_our_names_needs_no_stat(mstore: MaildirStore, monkeypatch) -> None:
    [info] = mstore.deliver([(ALICE, [b"Subject: x\n\nbody\n"])])

    def no_stat(*args, **kwargs):
        raise AssertionError("stat called for a name that carries S= and W=")

    monkeypatch.setattr(os.DirEntry, "stat", no_stat, raising=False)
    [listed] = mstore.list_messages(ALICE)
    assert (listed.uid, listed.size, listed.wire_size) == (info.uid, 17, 20)


def test_listing_a_mailbox_that_never_got_mail(mstore: MaildirStore) -> None:
    assert mstore.list_messages(BOB) == []
    assert mstore.usage(BOB).bytes == 0


@pytest.mark.parametrize(
    "ref",
    [
        MailboxRef("hosted.example", ".."),
        MailboxRef("..", "alice"),
        MailboxRef("hosted.example", "."),
        MailboxRef("hosted.example", "a/b"),
        MailboxRef("hosted.example", "../../etc"),
        MailboxRef("hosted.example/..", "alice"),
        MailboxRef("hosted.example", "al\x00ice"),
        MailboxRef("hosted.example", ".hidden"),
        MailboxRef(".hosted.example", "alice"),
        MailboxRef("hosted.example", ""),
        MailboxRef("", "alice"),
        MailboxRef("hosted.example", "/abs"),
        MailboxRef("hosted.example", "new line\n"),
    ],
)
def test_unsafe_paths_are_refused(mstore: MaildirStore, ref: MailboxRef) -> None:
    with pytest.raises(MaildirError):
        mstore.deliver([(ref, [BODY])])
    with pytest.raises(MaildirError):
        mstore.list_messages(ref)
    assert not mstore.root.exists() or list(mstore.root.rglob("*")) == []


def test_symlinked_mailbox_escaping_the_root_is_refused(
    mstore: MaildirStore, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (mstore.root / "hosted.example").mkdir(parents=True)
    (mstore.root / "hosted.example" / "alice").symlink_to(outside)
    with pytest.raises(MaildirError):
        mstore.deliver([(ALICE, [BODY])])
    assert list(outside.iterdir()) == []


def test_open_message_refuses_paths_outside_root(mstore: MaildirStore, tmp_path: Path) -> None:
    [info] = mstore.deliver([(ALICE, [BODY])])
    outside = tmp_path / "secret"
    outside.write_bytes(b"secret")
    forged = type(info)(info.uid, outside, 6, 6, 0.0)
    with pytest.raises(MaildirError):
        mstore.open_message(forged)


def test_crash_between_write_and_rename_leaves_nothing(
    mstore: MaildirStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the second rename fails (disk error, process killed mid-way)."""
    mstore.ensure(ALICE)
    mstore.ensure(BOB)
    real_rename = os.rename
    calls = []

    def failing_rename(src: object, dst: object) -> None:
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        real_rename(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError):
        mstore.deliver([(ALICE, [BODY]), (BOB, [BODY])])
    monkeypatch.undo()
    for ref in (ALICE, BOB):
        root = mstore.mailbox_path(ref)
        assert _files(root / "new") == [] and _files(root / "tmp") == []
        assert mstore.list_messages(ref) == []
    # A retry delivers exactly one copy each.
    mstore.deliver([(ALICE, [BODY]), (BOB, [BODY])])
    assert [mstore.usage(r).messages for r in (ALICE, BOB)] == [1, 1]


def test_rename_into_a_broken_new_fails_cleanly(mstore: MaildirStore) -> None:
    """A real rename failure (works as root too, unlike a read-only directory): ``new`` is a
    plain file, so rename(tmp/x, new/x) fails with ENOTDIR; nothing may be left behind."""
    root = mstore.ensure(ALICE)
    (root / "new").rmdir()
    (root / "new").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        mstore.deliver([(ALICE, [BODY])])
    assert _files(root / "tmp") == []
    assert (root / "new").read_bytes() == b""


def test_write_failure_removes_the_tmp_file(
    mstore: MaildirStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = mstore.ensure(ALICE)

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError):
        mstore.deliver([(ALICE, [BODY])])
    monkeypatch.undo()
    assert _files(root / "tmp") == [] and _files(root / "new") == []


def test_maildir_removed_by_another_process_is_recreated(mstore: MaildirStore) -> None:
    mstore.deliver([(ALICE, [BODY])])
    other_process = MaildirStore(mstore.root, hostname="other")
    other_process.remove_mailbox(ALICE)
    assert not mstore.mailbox_path(ALICE).exists()
    [info] = mstore.deliver([(ALICE, [BODY])])
    assert info.path.exists()


def test_clean_tmp_removes_only_stale_files(mstore: MaildirStore, clock: FakeClock) -> None:
    root = mstore.ensure(ALICE)
    [delivered] = mstore.deliver([(ALICE, [BODY])])
    stale = root / "tmp" / "1.M1P1Q1.crashed,S=3,W=3"
    fresh = root / "tmp" / "2.M1P1Q2.in-progress"
    stale.write_bytes(b"abc")
    fresh.write_bytes(b"abc")
    os.utime(stale, (clock.now - 7200, clock.now - 7200))
    os.utime(fresh, (clock.now - 60, clock.now - 60))
    assert mstore.clean_tmp() == 1
    assert _files(root / "tmp") == [fresh.name]
    # Debris is never delivered: the listing is unchanged.
    assert [m.uid for m in mstore.list_messages(ALICE)] == [delivered.uid]
    assert mstore.clean_tmp(older_than=30) == 1
    assert _files(root / "tmp") == []


def test_remove_mailbox(mstore: MaildirStore) -> None:
    mstore.deliver([(ALICE, [BODY]), (BOB, [BODY])])
    mstore.remove_mailbox(ALICE)
    assert not mstore.mailbox_path(ALICE).exists()
    assert mstore.usage(BOB).messages == 1


def test_removing_a_maildir_that_was_never_created_is_no_error(mstore: MaildirStore) -> None:
    mstore.remove_mailbox(ALICE)
    assert not mstore.mailbox_path(ALICE).exists()


def test_a_maildir_that_cannot_be_removed_raises_naming_its_path(mstore: MaildirStore) -> None:
    mstore.deliver([(ALICE, [BODY])])
    path = mstore.mailbox_path(ALICE)
    with undeletable(path), pytest.raises(MaildirError) as raised:
        mstore.remove_mailbox(ALICE)
    assert str(path) in str(raised.value)
    assert path.exists()


def test_empty_chunks_are_written_without_hanging(mstore: MaildirStore) -> None:
    [info] = mstore.deliver([(ALICE, [b"", b"Subject: x\n", b"", b"\n"])])
    assert info.path.read_bytes() == b"Subject: x\n\n"
    assert (info.size, info.wire_size) == (12, 14)
