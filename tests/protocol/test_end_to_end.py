"""SMTP in, POP3 out: a message sent through the ingress is fetched byte-for-byte (but for the
trace headers the ingress adds), deleted, and the Maildir is left empty."""

from __future__ import annotations

import poplib
import smtplib
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from app import maildir_index
from app.config import Settings
from app.maildir import MaildirStore, Usage
from tests.factories import DEFAULT_PASSWORD, seed_mailbox
from tests.protocol.pop3_helpers import TIMEOUT, RawClient, ref, running_server
from tests.protocol.smtp_helpers import IngressThread

USER = "carol@e2e.example"
# The awkward cases: a line that is only ".", lines starting with dots, an empty line in the
# body, 8-bit text, trailing spaces, and a long line.
ORIGINAL = (
    b"From: Sender <sender@example.org>\r\n"
    b"To: <carol@e2e.example>\r\n"
    b"Subject: end to end\r\n"
    b"Message-ID: <e2e-1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Hello Carol,\r\n"
    b".\r\n"
    b"..two dots\r\n"
    b".one dot\r\n"
    b"\r\n"
    b"gr\xc3\xbc\xc3\x9fe   \r\n" + b"x" * 900 + b"\r\n"
    b"-- \r\n"
    b"end\r\n"
)
TRACE_HEADERS = (b"return-path:", b"received:", b"delivered-to:", b"x-original-to:")


def test_smtp_to_pop3_byte_for_byte(
    settings: Settings,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    smtp_start: Callable[..., IngressThread],
) -> None:
    seed_mailbox(session_factory, USER)
    ingress = smtp_start()
    assert ingress.ingress is not None
    smtp_port = ingress.ingress.port
    with smtplib.SMTP("127.0.0.1", smtp_port, timeout=TIMEOUT) as smtp:
        refused = smtp.sendmail("sender@example.org", [USER], ORIGINAL)
        assert refused == {}

    with running_server(settings, session_factory=session_factory, store=store) as pop3:
        # Raw wire bytes: CRLF everywhere, dot-stuffed, the original as the tail.
        raw = RawClient(pop3.port)
        assert raw.login(USER, DEFAULT_PASSWORD).startswith(b"+OK Logged in, maildrop has 1")
        status = raw.cmd("RETR 1")
        wire = raw.multiline_raw()
        raw.cmd("QUIT")  # no DELE: nothing removed
        raw.at_eof()
        stuffed = ORIGINAL.replace(b"\r\n.", b"\r\n..")
        assert wire.endswith(stuffed + b".\r\n")
        trace = wire[: -len(stuffed + b".\r\n")]
        assert status == f"+OK {len(trace) + len(ORIGINAL)} octets".encode()
        header_lines = trace.split(b"\r\n")[:-1]
        assert header_lines, "the ingress added no trace header"
        for line in header_lines:
            assert line[:1] in (b" ", b"\t") or line.lower().startswith(TRACE_HEADERS), line

        # poplib (what a client sees after un-stuffing): the original, line for line.
        client = poplib.POP3("127.0.0.1", pop3.port, timeout=TIMEOUT)
        client.user(USER)
        client.pass_(DEFAULT_PASSWORD)
        _, lines, _ = client.retr(1)
        assert b"\r\n".join(lines) + b"\r\n" == trace + ORIGINAL
        client.dele(1)
        assert client.quit().startswith(b"+OK")
    assert store.list_messages(ref(USER)) == []
    maildir = store.mailbox_path(ref(USER))
    # No message file is left anywhere; only the Maildir index (a cache) stays, and it is empty.
    index_files = {maildir / maildir_index.BASE_NAME, maildir / maildir_index.LOG_NAME}
    assert [p for p in maildir.rglob("*") if p.is_file() and p not in index_files] == []
    assert store.usage(ref(USER)) == Usage(bytes=0, messages=0)
