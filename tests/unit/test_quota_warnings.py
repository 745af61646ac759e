"""Quota warning levels (table-driven) and the per-Maildir state, on a temp Maildir store."""

from __future__ import annotations

from typing import Any

import pytest

from app.config import Settings
from app.maildir import MailboxRef, MaildirStore
from app.quota_warnings import STATE_FILE, Receiver, check_mailbox, level_for

THRESHOLDS = (80, 90, 100)


@pytest.mark.parametrize(
    ("used", "quota", "level"),
    [
        (0, 1000, 0),
        (799, 1000, 0),
        (800, 1000, 80),
        (899, 1000, 80),
        (900, 1000, 90),
        (999, 1000, 90),
        (1000, 1000, 100),
        (5000, 1000, 100),
        (10**12, 0, 0),  # no quota: never warned
    ],
)
def test_level_for(used: int, quota: int, level: int) -> None:
    assert level_for(used, quota, THRESHOLDS) == level


def _fill(store: MaildirStore, ref: MailboxRef, octets: int) -> None:
    store.deliver([(ref, [b"x" * octets])])


def test_state_file_warns_once_per_crossing_and_rearms(
    settings: Settings, store: MaildirStore
) -> None:
    ref = MailboxRef("hosted.example", "user")
    receiver = Receiver(ref, "user@hosted.example", 10_000)
    _fill(store, ref, 100)
    assert check_mailbox(store, settings, receiver) is None
    assert not (store.mailbox_path(ref) / STATE_FILE).exists()  # below: no file at all
    _fill(store, ref, 8_000)
    assert check_mailbox(store, settings, receiver) == 80
    assert [check_mailbox(store, settings, receiver) for _ in range(5)] == [None] * 5
    assert (store.mailbox_path(ref) / STATE_FILE).read_text() == "80\n"
    store.expunge(ref, store.list_messages(ref))
    assert check_mailbox(store, settings, receiver) is None
    assert not (store.mailbox_path(ref) / STATE_FILE).exists()  # re-armed
    _fill(store, ref, 9_500)
    assert check_mailbox(store, settings, receiver) == 90  # jumped two: one warning, the higher
    warnings = [m for m in store.list_messages(ref) if b"Quota-Warning" in m.path.read_bytes()]
    assert len(warnings) == 1


class _CountingStore(MaildirStore):
    """The real store, counting its usage reads."""

    usage_reads = 0

    def usage(self, ref: MailboxRef) -> Any:
        self.usage_reads += 1
        return super().usage(ref)


def test_mailbox_without_quota_is_not_measured(settings: Settings, store: MaildirStore) -> None:
    counting = _CountingStore(settings.maildir_root, hostname=settings.hostname)
    ref = MailboxRef("hosted.example", "user")
    _fill(counting, ref, 5_000)
    assert check_mailbox(counting, settings, Receiver(ref, "user@hosted.example", 0)) is None
    assert counting.usage_reads == 0
    assert check_mailbox(counting, settings, Receiver(ref, "user@hosted.example", 5_000)) == 100
    assert counting.usage_reads == 1
    # The quota removed later: the recorded level is dropped (re-armed) without a usage read.
    assert check_mailbox(counting, settings, Receiver(ref, "user@hosted.example", 0)) is None
    assert counting.usage_reads == 1
    assert not (counting.mailbox_path(ref) / STATE_FILE).exists()
