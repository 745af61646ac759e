"""Submission when things fail: the database down (451 4.3.0, nothing queued), a full disk
(452 4.3.1, the local copies taken back, nothing queued), and the per-client-address
connection limit (421 4.7.0 at connect), each against a real server on port 0."""

from __future__ import annotations

import errno
import smtplib
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import make_engine, make_session_factory
from app.maildir import MaildirStore
from app.models import OutboundMessage
from app.spool import SpoolFile, SpoolStore
from tests.protocol.smtp_helpers import ADDRESSES, all_message_files
from tests.protocol.submission_helpers import (
    TIMEOUT,
    SubmissionThread,
    client_tls,
    message,
    starttls_client,
)

USER, OTHER = ADDRESSES["user"], ADDRESSES["other"]
REMOTE = "bob@remote.example"


class _Switchable:
    """A session factory that can be switched to a database nobody serves."""

    def __init__(self, up: sessionmaker[Session], down: sessionmaker[Session]) -> None:
        self.up, self.down_factory, self.down = up, down, False

    def __call__(self) -> Session:
        return (self.down_factory if self.down else self.up)()


@pytest.fixture
def dead_database() -> Iterator[sessionmaker[Session]]:
    """Sessions on a PostgreSQL URL whose port is bound but never listens: refused at once."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        down = Settings(database_url=f"postgresql://postgres@127.0.0.1:{port}/none", _env_file=None)  # type: ignore[call-arg]
        engine = make_engine(down, connect_args={"connect_timeout": 2})
        yield make_session_factory(engine)
        engine.dispose()


class _FullSpool(SpoolStore):
    """A real spool whose disk is full (the write fails with ENOSPC)."""

    def write(self, chunks: Iterable[bytes]) -> SpoolFile:
        raise OSError(errno.ENOSPC, "No space left on device: /secret/spool")


def _queued(factory: sessionmaker[Session]) -> int:
    with factory() as s:
        return len(s.scalars(select(OutboundMessage)).all())


def _spool_files(settings: Settings) -> list[Path]:
    root = Path(settings.spool_root)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_database_down_is_451_4_3_0_and_nothing_is_queued(
    smtp_world: None,
    submission_settings: Settings,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    dead_database: sessionmaker[Session],
    tls_files: tuple[Path, Path],
) -> None:
    factory = _Switchable(session_factory, dead_database)
    server = SubmissionThread(submission_settings, factory, store).start()  # type: ignore[arg-type]
    try:
        before = all_message_files(Path(submission_settings.maildir_root))
        # Down before the transaction: MAIL cannot check the sender.
        client = starttls_client(server.port, tls_files[0], login=USER)
        factory.down = True
        code, text = client.docmd(f"MAIL FROM:<{USER}>")
        assert (code, text.decode()[:6]) == (451, "4.3.0 "), text
        client.quit()
        # Down at the end of DATA: no 250, no local copy, nothing queued or spooled.
        factory.down = False
        client = starttls_client(server.port, tls_files[0], login=USER)
        assert client.docmd(f"MAIL FROM:<{USER}>")[0] == 250
        assert client.docmd(f"RCPT TO:<{OTHER}>")[0] == 250
        assert client.docmd(f"RCPT TO:<{REMOTE}>")[0] == 250
        assert client.docmd("DATA")[0] == 354
        factory.down = True
        client.send(message(USER, OTHER) + b".\r\n")
        code, text = client.getreply()
        assert (code, text.decode()[:6]) == (451, "4.3.0 "), text
        assert client.docmd("RSET")[0] == 250  # the session goes on
        client.quit()
    finally:
        factory.down = False
        server.stop()
    assert _queued(session_factory) == 0
    assert _spool_files(submission_settings) == []
    assert all_message_files(Path(submission_settings.maildir_root)) == before


def test_full_disk_is_452_4_3_1_and_the_local_copies_are_taken_back(
    smtp_world: None,
    submission_settings: Settings,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    tls_files: tuple[Path, Path],
) -> None:
    spool = _FullSpool(submission_settings.spool_root)
    server = SubmissionThread(submission_settings, session_factory, store, spool=spool).start()
    try:
        before = all_message_files(Path(submission_settings.maildir_root))
        client = starttls_client(server.port, tls_files[0], login=USER)
        with pytest.raises(smtplib.SMTPDataError) as refused:
            # The hosted copy is stored first, then the spool write fails.
            client.sendmail(USER, [OTHER, REMOTE], message(USER, OTHER))
        # RFC 3463 section 3.4: X.3.1 mail system full; no path or exception in the text.
        assert refused.value.smtp_code == 452
        text = refused.value.smtp_error.decode()
        assert text.startswith("4.3.1 ") and "secret" not in text and "OSError" not in text
        assert client.noop()[0] == 250
        client.quit()
    finally:
        server.stop()
    assert _queued(session_factory) == 0
    assert all_message_files(Path(submission_settings.maildir_root)) == before


def _greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        return conn.makefile("rb").readline()


def test_connections_per_client_address_are_limited(
    smtp_world: None,
    submission_start: Callable[..., SubmissionThread],
    tls_files: tuple[Path, Path],
) -> None:
    server = submission_start(submission_max_connections_per_ip=2)
    first = starttls_client(server.port, tls_files[0], login=USER)
    second = smtplib.SMTP_SSL(
        "127.0.0.1", server.tls_port, timeout=TIMEOUT, context=client_tls(tls_files[0])
    )
    # Both ports count: the third connection from this address is refused at once.
    assert _greeting(server.port) == (
        b"421 4.7.0 Too many connections from your address, try again later\r\n"
    )
    # STARTTLS (a second connection_made) did not count twice; a closed one frees its place
    # (once the server has seen it close: polled with a deadline).
    first.quit()
    deadline = time.monotonic() + 10
    while True:
        try:
            again = starttls_client(server.port, tls_files[0], login=USER)
            break
        except smtplib.SMTPConnectError as exc:
            assert exc.smtp_code == 421
            assert time.monotonic() < deadline, "the closed connection was never released"
            time.sleep(0.05)
    assert again.noop()[0] == 250
    again.quit()
    second.quit()
