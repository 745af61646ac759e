"""The ingress as real processes: SIGKILL in the middle of DATA leaves nothing in new/, a
250-answered message survives a SIGKILL, and two workers share one port (SO_REUSEPORT)."""

from __future__ import annotations

import smtplib
import time
from pathlib import Path

from app.config import Settings
from app.maildir import MaildirStore
from tests.protocol.smtp_helpers import (
    ADDRESSES,
    RawClient,
    WorkerProcess,
    all_message_files,
    free_port,
    new_messages,
)


def test_smtp_sigkill_mid_data_stores_nothing_and_250_survives_restart(
    smtp_world: None, settings: Settings, store: MaildirStore, tmp_path: Path
) -> None:
    root = Path(settings.maildir_root)
    before = all_message_files(root)
    worker = WorkerProcess(settings, port=0, cwd=tmp_path)
    try:
        client = RawClient(worker.port)
        client.cmd("EHLO client.example")
        client.cmd("MAIL FROM:<a@remote.example>")
        client.cmd("RCPT TO:<user@hosted.example>")
        assert client.cmd("DATA").startswith("354")
        client.send(b"Subject: half\r\n\r\n" + b"partial line\r\n" * 5000)
        time.sleep(0.3)  # the server has read the half message
        worker.kill()
        client.close()
        assert all_message_files(root) == before  # nothing in new/ (nor tmp/, cur/)

        worker = WorkerProcess(settings, port=0, cwd=tmp_path)
        body = b"Subject: durable\r\n\r\n" + b"keep me\r\n" * 1000
        with smtplib.SMTP("127.0.0.1", worker.port, timeout=10) as c:
            c.ehlo("client.example")
            c.mail("a@remote.example")
            c.rcpt(ADDRESSES["user"])
            code, _ = c.data(body)
            assert code == 250
            worker.kill()  # right after the 250: no graceful anything
    finally:
        worker.terminate()

    worker = WorkerProcess(settings, port=0, cwd=tmp_path)
    worker.terminate()
    [message] = new_messages(store, ADDRESSES["user"])
    assert message.endswith(body.replace(b"\r\n", b"\n"))


def test_smtp_two_workers_share_one_port(
    smtp_world: None, settings: Settings, store: MaildirStore, tmp_path: Path
) -> None:
    port = free_port()
    workers = [WorkerProcess(settings, port=port, cwd=tmp_path) for _ in range(2)]
    try:
        assert {w.port for w in workers} == {port}
        for i in range(24):  # a new connection each: the kernel spreads them
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
                assert (
                    c.sendmail("a@remote.example", [ADDRESSES["user"]], f"n: {i}\r\n\r\nx\r\n")
                    == {}
                )
    finally:
        for w in workers:
            w.terminate()
    names = [p.name for p in (store.mailbox_path(_ref()) / "new").iterdir()]
    assert len(names) == 24
    # Maildir names carry the delivering process id (P<pid>): both workers delivered.
    for w in workers:
        assert any(f"P{w.pid}Q" in name for name in names), (w.pid, names)


def _ref():  # type: ignore[no-untyped-def]
    from tests.protocol.smtp_helpers import ref

    return ref(ADDRESSES["user"])
