"""Quota warnings: one message to a mailbox when its usage crosses a threshold on the way up.

Theory of operation. After a delivery has stored its copies, ``after_delivery`` looks at each
receiving mailbox's usage (the Maildir index's totals: no directory scan) against its quota
and the thresholds (``MAILHOST_QUOTA_WARNING_THRESHOLDS``, default 80/90/100 %). The level
already warned about lives in a small file in the Maildir itself (``mailhost-quota-warned``,
beside Dovecot's own ``maildirsize``), so the check needs no database write and costs one
``stat`` while a mailbox is below the first threshold and has never been warned.

* Crossing upwards (usage now at a higher level than the file says): one warning message for
  the highest threshold reached (a single big message that jumps from 70 % to 95 % gives one
  warning, for 90 %), then the file records that level. Further deliveries at that level
  send nothing: no storm.
* Falling back (the user deleted mail): the next delivery lowers the recorded level to the
  current one, so crossing again warns again.
* Concurrent deliveries to one mailbox take an exclusive ``flock`` on the state file, so a
  crossing is warned once, not once per worker. The warning is stored before the level is
  recorded: a crash in between can repeat a warning, never lose one.
* Never a loop: the warning is written straight into the Maildir (it passes no SMTP door and
  no resolution, so no alias or forward sends it on), it has a null return path and
  ``Auto-Submitted: auto-generated`` (RFC 3834 section 5), and it does not come back here.
  It is stored even at 100 % (it is small, and it is the one message the user must see).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.policy
import email.utils
import fcntl
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import EmailMessage

from app import metrics
from app.config import Settings
from app.maildir import MailboxRef, MaildirStore

log = logging.getLogger("mailhost.quota")

STATE_FILE = "mailhost-quota-warned"
_POLICY = email.policy.default.clone(linesep="\n")


@dataclass(frozen=True, slots=True)
class Receiver:
    """A mailbox that just received a copy: where it lives, its address and quota."""

    ref: MailboxRef
    address: str
    quota_bytes: int


def level_for(used: int, quota: int, thresholds: Iterable[int]) -> int:
    """The highest threshold (percent) that ``used`` of ``quota`` reaches; 0 for none."""
    if quota <= 0:
        return 0
    reached = [t for t in thresholds if used * 100 >= t * quota]
    return max(reached, default=0)


def human_size(octets: int) -> str:
    value = float(octets)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def build_warning(
    settings: Settings, *, address: str, used: int, quota: int, percent: int
) -> bytes:
    """The warning message (LF line endings, as the Maildir store takes them)."""
    fields = {
        "address": address,
        "used": human_size(used),
        "quota": human_size(quota),
        "percent": percent,
        "hostname": settings.hostname,
    }
    message = EmailMessage(policy=_POLICY)
    message["Return-Path"] = "<>"
    message["Delivered-To"] = address
    message["From"] = settings.quota_warning_from.format(**fields)
    message["To"] = address
    message["Subject"] = settings.quota_warning_subject.format(**fields)
    message["Date"] = email.utils.format_datetime(dt.datetime.now(dt.UTC))
    message["Message-ID"] = email.utils.make_msgid("quota", domain=settings.hostname)
    # RFC 3834 section 5: machine-made; responders must not answer it.
    message["Auto-Submitted"] = "auto-generated"
    message["X-Mailhost-Quota-Warning"] = str(percent)
    message.set_content(settings.quota_warning_text.format(**fields) + "\n")
    return message.as_bytes()


def _read_level(fd: int) -> int:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else 0


def _write_level(fd: int, level: int) -> None:
    os.lseek(fd, 0, os.SEEK_SET)
    os.ftruncate(fd, 0)
    os.write(fd, f"{level}\n".encode())


def check_mailbox(store: MaildirStore, settings: Settings, receiver: Receiver) -> int | None:
    """Warn ``receiver`` if it crossed a threshold upwards; the threshold warned, or None."""
    # Without a quota there is nothing to warn about: no usage read at all (most mailboxes of
    # an ISP; reading it costs a stat of the index, and a scan when the index is stale).
    used = store.usage(receiver.ref).bytes if receiver.quota_bytes > 0 else 0
    level = level_for(used, receiver.quota_bytes, settings.quota_warning_thresholds)
    state = store.mailbox_path(receiver.ref) / STATE_FILE
    if level == 0 and not state.exists():
        return None  # the common case: one stat
    fd = os.open(state, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        warned = _read_level(fd)
        if level == warned:
            return None
        if level > warned:
            data = build_warning(
                settings,
                address=receiver.address,
                used=used,
                quota=receiver.quota_bytes,
                percent=level,
            )
            store.deliver([(receiver.ref, [data])])
            metrics.quota_warning(level)
            log.info("quota warning %d%% delivered to %s", level, receiver.address)
        if level == 0:
            os.unlink(state)  # back below every threshold: as if never warned
        else:
            _write_level(fd, level)
        return level if level > warned else None
    finally:
        os.close(fd)


def after_delivery(store: MaildirStore, settings: Settings, receivers: Iterable[Receiver]) -> None:
    """The one hook every delivery into Maildirs calls after storing (never raises: the
    message is stored and answered; a warning that fails is logged and tried next time)."""
    if not settings.quota_warning_thresholds:
        return
    for receiver in receivers:
        with contextlib.suppress(FileNotFoundError):  # mailbox removed meanwhile
            try:
                check_mailbox(store, settings, receiver)
            except FileNotFoundError:
                raise
            except Exception:
                log.exception("quota warning check failed for %s", receiver.address)
