"""Delivery through a real ingress with smtplib: golden path, trace headers, aliases,
catch-all, domain alias, upper case, STARTTLS, failures that must answer 451, and mailboxes
deleted while a message for them is in flight."""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import make_engine, make_session_factory, transaction
from app.maildir import MailboxRef, MaildirStore
from app.services import mailboxes, stats
from app.services.audit import CLI_ACTOR
from tests.protocol.smtp_helpers import (
    ADDRESSES,
    IngressThread,
    RawClient,
    add_mailbox,
    all_message_files,
    new_messages,
    ref,
    remove_mailbox,
)

BODY = (
    b"From: Alice <alice@remote.example>\r\n"
    b"To: user@hosted.example\r\n"
    b"Subject: caf\xc3\xa9 8-bit\r\n"
    b"\r\n"
    b"line one\r\n"
    b".leading dot survives\r\n"
    b"\r\n"
    b"last line\r\n"
)
BODY_LF = BODY.replace(b"\r\n", b"\n")


def _send(port: int, rcpts: list[str], body: bytes = BODY, sender: str = "alice@remote.example"):
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example", timeout=10) as client:
        return client.sendmail(sender, rcpts, body)


def _split(message: bytes) -> tuple[list[bytes], bytes]:
    """The three trace header lines (Received folded into one) and the rest."""
    lines = message.split(b"\n")
    return_path, delivered_to = lines[0], lines[1]
    received = [lines[2]]
    i = 3
    while lines[i].startswith(b"\t"):
        received.append(lines[i])
        i += 1
    return [return_path, delivered_to, b"\n".join(received)], b"\n".join(lines[i:])


def test_smtp_golden_path_stores_message_as_sent_with_trace_headers(
    smtp_server: IngressThread, store: MaildirStore
) -> None:
    refused = _send(smtp_server.port, [ADDRESSES["user"]])
    assert refused == {}
    [message] = new_messages(store, ADDRESSES["user"])
    trace, rest = _split(message)
    assert rest == BODY_LF  # byte for byte, CRLF -> LF, dot-unstuffed, 8-bit intact
    assert trace[0] == b"Return-Path: <alice@remote.example>"
    assert trace[1] == b"Delivered-To: user@hosted.example"
    received = trace[2].decode()
    assert re.match(
        r"Received: from client\.example \(\[127\.0\.0\.1\]\)\n"
        r"\tby mx\.test\.example \(Mailhost\) with ESMTP id [0-9A-F]{12}\n"
        r"\tfor <user@hosted\.example>; \w{3}, \d{1,2} \w{3} \d{4} [\d:]{8} \+0000$",
        received,
    ), received
    assert not list((store.mailbox_path(MailboxRef("hosted.example", "user")) / "tmp").iterdir())


def test_smtp_alias_with_several_targets_gets_one_copy_each(
    smtp_server: IngressThread, store: MaildirStore
) -> None:
    # team -> user, other; user named again directly: still one copy for user.
    _send(smtp_server.port, [ADDRESSES["team"], ADDRESSES["user"]])
    [to_user] = new_messages(store, ADDRESSES["user"])
    [to_other] = new_messages(store, ADDRESSES["other"])
    assert b"Delivered-To: user@hosted.example\n" in to_user
    assert b"Delivered-To: other@hosted.example\n" in to_other
    assert b"for <team@hosted.example>;" in to_other
    assert _split(to_user)[1] == _split(to_other)[1] == BODY_LF


def test_smtp_catch_all_domain_alias_and_upper_case(
    smtp_server: IngressThread, store: MaildirStore
) -> None:
    _send(smtp_server.port, ["whoever@catchall.example"])
    [caught] = new_messages(store, ADDRESSES["catchall_box"])
    # A catch-all delivery names its envelope recipient (multidrop; test_multidrop.py).
    assert (
        b"Delivered-To: whoever@catchall.example\nX-Original-To: whoever@catchall.example\n"
        in caught
    )
    _send(smtp_server.port, ["user@alias.example"])
    _send(smtp_server.port, ["USER@HOSTED.EXAMPLE"])
    delivered = new_messages(store, ADDRESSES["user"])
    assert len(delivered) == 2
    assert all(b"Delivered-To: user@hosted.example\n" in m for m in delivered)


def test_smtp_null_sender_and_pipelined_transactions(
    smtp_server: IngressThread, store: MaildirStore
) -> None:
    client = RawClient(smtp_server.port)
    client.cmd("EHLO client.example")
    # RFC 2920: a whole transaction and the next one in one write; replies in order.
    client.send(
        b"MAIL FROM:<>\r\nRCPT TO:<user@hosted.example>\r\nRCPT TO:<nobody@hosted.example>\r\n"
        b"DATA\r\n"
    )
    assert [client.reply()[:9] for _ in range(4)] == [
        "250 2.1.0",
        "250 2.1.5",
        "550 5.1.1",
        "354 End d",
    ]
    # The end of data ends a group: the client waits for its reply (Postfix 3.9 rule).
    assert client.cmd(b"Subject: bounce\r\n\r\nx\r\n.\r\n").startswith("250 2.0.0")
    client.send(b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<other@hosted.example>\r\nDATA\r\n")
    assert [client.reply()[:9] for _ in range(3)] == ["250 2.1.0", "250 2.1.5", "354 End d"]
    assert client.cmd(b"second\r\n.\r\nQUIT\r\n").startswith("250 2.0.0")
    assert client.reply().startswith("221 2.0.0")
    client.close()
    [bounce] = new_messages(store, ADDRESSES["user"])
    assert bounce.startswith(b"Return-Path: <>\n")
    assert new_messages(store, ADDRESSES["other"])[0].endswith(b"\nsecond\n")


def test_smtp_commands_pipelined_after_end_of_data_are_refused(
    smtp_server: IngressThread, store: MaildirStore
) -> None:
    # Postfix 3.9 smtpd_forbid_unauth_pipelining: the message, properly ended, is stored and
    # answered; the commands sent with it before our reply are refused, never executed.
    client = RawClient(smtp_server.port)
    client.cmd("EHLO client.example")
    client.send(b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<user@hosted.example>\r\nDATA\r\n")
    assert [client.reply()[:3] for _ in range(3)] == ["250", "250", "354"]
    client.send(
        b"Subject: first\r\n\r\nx\r\n.\r\nMAIL FROM:<evil@remote.example>\r\n"
        b"RCPT TO:<other@hosted.example>\r\nDATA\r\nSubject: smuggled\r\n\r\n.\r\n"
    )
    assert client.reply().startswith("250 2.0.0 ")
    assert client.reply() == "554 5.5.0 Error: SMTP protocol synchronization"
    assert client.closed_by_server()
    client.close()
    [message] = new_messages(store, ADDRESSES["user"])
    assert message.endswith(b"Subject: first\n\nx\n")
    assert new_messages(store, ADDRESSES["other"]) == []


def test_smtp_starttls_is_offered_and_recorded(
    smtp_world: None,
    smtp_start: Callable[..., IngressThread],
    tls_settings: Settings,
    store: MaildirStore,
) -> None:
    server = smtp_start(tls_settings)
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="client.example", timeout=10) as c:
        c.ehlo()
        assert c.has_extn("starttls")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        code, text = c.starttls(context=context)
        assert (code, text[:5]) == (220, b"2.0.0")
        c.ehlo()
        assert not c.has_extn("starttls")
        assert not c.has_extn("auth")
        c.sendmail("alice@remote.example", [ADDRESSES["user"]], BODY)
    [message] = new_messages(store, ADDRESSES["user"])
    assert b") with ESMTPS id " in message
    assert b"(using TLSv1." in message


def test_smtp_database_unreachable_is_temporary(
    smtp_start: Callable[..., IngressThread], settings: Settings, store: MaildirStore
) -> None:
    # A real engine pointed at a port where no database listens: OperationalError.
    down = Settings(database_url="postgresql://postgres@127.0.0.1:9/none", _env_file=None)  # type: ignore[call-arg]
    engine = make_engine(down, connect_args={"connect_timeout": 2})
    running = IngressThread(settings, make_session_factory(engine), store, greet_delay=0.05)
    running.start()
    try:
        client = RawClient(running.port)
        client.cmd("EHLO client.example")
        client.cmd("MAIL FROM:<a@remote.example>")
        assert client.cmd("RCPT TO:<user@hosted.example>").startswith("451 4.3.0 ")
        assert client.cmd("RSET").startswith("250 2.0.0")
        client.close()
    finally:
        running.stop()
        engine.dispose()


class _FailingStore(MaildirStore):
    """A real store whose disk fails after writing the first copy (simulated ENOSPC)."""

    def deliver(self, copies):  # type: ignore[no-untyped-def]
        original = MaildirStore.deliver

        calls = {"n": 0}

        def failing_write(*args, **kwargs):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] > 1:
                raise OSError(28, "No space left on device: /secret/path")
            return real_writev(*args, **kwargs)

        import os

        real_writev = os.writev
        os.writev = failing_write  # type: ignore[assignment]
        try:
            return original(self, copies)
        finally:
            os.writev = real_writev  # type: ignore[assignment]


def test_smtp_full_disk_answers_452_4_3_1_and_stores_nothing(
    smtp_world: None,
    settings: Settings,
    session_factory: sessionmaker[Session],
) -> None:
    store = _FailingStore(settings.maildir_root, hostname=settings.hostname)
    running = IngressThread(settings, session_factory, store, greet_delay=0.05).start()
    try:
        before = all_message_files(Path(settings.maildir_root))
        client = RawClient(running.port)
        client.cmd("EHLO client.example")
        client.cmd("MAIL FROM:<a@remote.example>")
        assert client.cmd("RCPT TO:<team@hosted.example>").startswith("250")  # two copies
        assert client.cmd("DATA").startswith("354")
        reply = client.cmd(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        # RFC 3463 section 3.4: X.3.1 mail system full (the store raised ENOSPC).
        assert reply.startswith("452 4.3.1 ")
        assert "secret" not in reply and "OSError" not in reply
        assert client.cmd("NOOP").startswith("250")
        client.close()
        assert all_message_files(Path(settings.maildir_root)) == before
    finally:
        running.stop()


def test_smtp_handler_exception_is_451_with_reference_and_no_internals(
    smtp_start: Callable[..., IngressThread], settings: Settings, store: MaildirStore
) -> None:
    def broken_factory() -> Session:
        raise RuntimeError("internal detail: password=hunter2")

    running = IngressThread(settings, broken_factory, store, greet_delay=0.05).start()  # type: ignore[arg-type]
    try:
        client = RawClient(running.port)
        client.cmd("EHLO client.example")
        client.cmd("MAIL FROM:<a@remote.example>")
        reply = client.cmd("RCPT TO:<user@hosted.example>")
        assert re.match(r"451 4\.3\.0 Internal error, reference [0-9a-f]{8}$", reply), reply
        assert client.cmd("RSET").startswith("250 2.0.0")
        client.close()
    finally:
        running.stop()


def test_smtp_deliveries_counter(
    smtp_server: IngressThread, session_factory: sessionmaker[Session]
) -> None:
    _send(smtp_server.port, [ADDRESSES["team"]])
    _send(smtp_server.port, [ADDRESSES["user"]])
    smtp_server.stop()  # flushes the batched counter
    with transaction(session_factory) as session:
        assert stats.get(session, metric="deliveries") == 3  # copies stored


def test_smtp_held_pipelined_replies_are_sent_before_waiting_for_input(
    smtp_server: IngressThread,
) -> None:
    # Replies to pipelined commands may be held while the next command is buffered (RFC 2920
    # section 3.2), but never while the server waits: with the third command incomplete, the
    # first two replies must arrive without the client sending anything more.
    client = RawClient(smtp_server.port)
    client.cmd("EHLO client.example")
    client.send(b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<user@hosted.example>\r\nRCPT TO:<us")
    assert [client.reply()[:9] for _ in range(2)] == ["250 2.1.0", "250 2.1.5"]
    # A junk reply among held ones keeps its place; RSET replies are held too (NOOP may only
    # end a group, RFC 2920 section 3.1).
    client.send(b"er@hosted.example>\r\nFROB\r\nRSET\r\nMAIL FROM:<b@remote.example>\r\nNOOP\r\n")
    assert [client.reply()[:9] for _ in range(5)] == [
        "250 2.1.5",
        "500 5.5.2",
        "250 2.0.0",
        "250 2.1.0",
        "250 2.0.0",
    ]
    assert client.cmd("QUIT").startswith("221 2.0.0")
    client.close()


def test_smtp_logs_one_line_per_transaction_without_body(
    smtp_server: IngressThread, caplog: pytest.LogCaptureFixture
) -> None:
    # The line is written by the delivery job (off the event loop) before the 250 is sent,
    # so it is there as soon as the client has its reply.
    caplog.set_level(logging.INFO, logger="smtp_ingress")
    _send(smtp_server.port, [ADDRESSES["team"], ADDRESSES["user"]], sender="a@remote.example")
    lines = [r.getMessage() for r in caplog.records if r.name == "smtp_ingress"]
    transactions = [line for line in lines if line.startswith("qid=")]
    assert len(transactions) == 1, lines
    assert re.fullmatch(
        r"qid=[0-9A-F]{12} client=127\.0\.0\.1 helo=client\.example from=<a@remote\.example>"
        r" to=<team@hosted\.example>,<user@hosted\.example> copies=2"
        rf" size={len(BODY_LF)} result=250 2\.0\.0",
        transactions[0],
    ), transactions[0]
    assert not any("line one" in line or "Subject" in line for line in lines)


def test_smtp_failed_delivery_is_logged_with_its_reference(
    smtp_world: None,
    settings: Settings,
    session_factory: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="smtp_ingress")
    store = _FailingStore(settings.maildir_root, hostname=settings.hostname)
    running = IngressThread(settings, session_factory, store, greet_delay=0.05).start()
    try:
        client = RawClient(running.port)
        client.cmd("EHLO client.example")
        client.cmd("MAIL FROM:<a@remote.example>")
        client.cmd("RCPT TO:<team@hosted.example>")
        client.cmd("DATA")
        reply = client.cmd(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        client.close()
    finally:
        running.stop()
    assert reply.startswith("452 4.3.1 ")
    # The transaction line and the stack trace share a reference, so one finds the other.
    transactions = [r.getMessage() for r in caplog.records if r.getMessage().startswith("qid=")]
    assert len(transactions) == 1
    ref = re.search(r" result=452 4\.3\.1 ref=([0-9a-f]{8})$", transactions[0])
    assert ref is not None, transactions[0]
    failures = [r for r in caplog.records if r.getMessage().startswith("delivery failed")]
    assert len(failures) == 1 and f"id={ref.group(1)}" in failures[0].getMessage()
    assert failures[0].exc_info is not None


# --------------------------------------------------------------------------- deleted mailboxes
DAVE = "dave@hosted.example"
OLD_MAIL = b"Subject: for old dave\r\n\r\nmail for old dave\r\n"


def _files_of(store: MaildirStore, address: str) -> list[Path]:
    """Every file in the Maildir of ``address`` (tmp, new and cur)."""
    path = store.mailbox_path(ref(address))
    return sorted(p for p in path.glob("*/*") if p.is_file())


def _start_data(port: int, rcpts: list[str]) -> RawClient:
    """A session left in DATA after the 354 (every RCPT accepted)."""
    client = RawClient(port)
    client.cmd("EHLO client.example")
    assert client.cmd("MAIL FROM:<a@remote.example>").startswith("250")
    for rcpt in rcpts:
        assert client.cmd(f"RCPT TO:<{rcpt}>").startswith("250 2.1.5"), rcpt
    assert client.cmd("DATA").startswith("354")
    client.send(OLD_MAIL)  # the body, without its end
    return client


def test_smtp_mailbox_deleted_during_data_is_not_inherited_by_the_next_owner(
    smtp_server: IngressThread,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="smtp_ingress")
    add_mailbox(session_factory, DAVE)
    client = _start_data(smtp_server.port, [DAVE])
    remove_mailbox(session_factory, store, DAVE)  # between RCPT and the end of DATA
    # Nobody got the message: refused as a whole (RFC 5321 4.2.5), the sender gets a bounce.
    assert client.cmd(b".\r\n").startswith("550 5.1.1 Recipient mailbox no longer exists")
    assert client.cmd("RSET").startswith("250 2.0.0")
    client.close()
    add_mailbox(session_factory, DAVE)  # a new owner at the same address
    assert store.list_messages(ref(DAVE)) == []
    assert _files_of(store, DAVE) == []
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("qid=")]
    # size: the body with LF line endings (41 octets); gone: copies dropped
    assert line.endswith(" copies=0 size=41 result=550 5.1.1 gone=1"), line


def test_smtp_mailbox_deleted_during_data_other_recipients_still_get_it(
    smtp_server: IngressThread, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    add_mailbox(session_factory, DAVE)
    before = len(new_messages(store, ADDRESSES["user"]))
    client = _start_data(smtp_server.port, [DAVE, ADDRESSES["user"]])
    remove_mailbox(session_factory, store, DAVE)
    assert client.cmd(b".\r\n").startswith("250 2.0.0 Ok: delivered as ")
    client.close()
    messages = new_messages(store, ADDRESSES["user"])
    assert len(messages) == before + 1 and messages[-1].endswith(b"\nmail for old dave\n")
    add_mailbox(session_factory, DAVE)
    assert _files_of(store, DAVE) == []


def test_smtp_mailbox_deleted_after_its_lookup_was_cached(
    smtp_world: None,
    smtp_start: Callable[..., IngressThread],
    session_factory: sessionmaker[Session],
    store: MaildirStore,
) -> None:
    # The resolution cache accepts RCPT for a mailbox deleted since it was looked up; the
    # check after storing closes that window too.
    server = smtp_start(smtp_resolution_cache_seconds=600)
    add_mailbox(session_factory, DAVE)
    assert _send(server.port, [DAVE]) == {}
    assert len(new_messages(store, DAVE)) == 1
    remove_mailbox(session_factory, store, DAVE)
    add_mailbox(session_factory, DAVE)  # the new owner exists before the next message
    client = _start_data(server.port, [DAVE])  # RCPT answered from the cache
    assert client.cmd(b".\r\n").startswith("550 5.1.1 ")
    client.close()
    assert _files_of(store, DAVE) == []


def test_smtp_mailbox_deletion_committing_after_the_check_takes_the_copy_with_it(
    smtp_server: IngressThread, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    # The other side of the ordering argument in IngressHandler._deliver: the deletion is
    # not committed when the delivery checks, so the copy is kept and answered 250; the
    # deletion commits afterwards and removes the Maildir, copy included.
    mailbox_id = add_mailbox(session_factory, DAVE)
    client = _start_data(smtp_server.port, [DAVE])
    with transaction(session_factory) as session:
        mailboxes.delete_mailbox(session, actor=CLI_ACTOR, mailbox_id=mailbox_id)
        assert client.cmd(b".\r\n").startswith("250 2.0.0 ")
        assert len(new_messages(store, DAVE)) == 1
    store.remove_mailbox(ref(DAVE))
    client.close()
    add_mailbox(session_factory, DAVE)
    assert _files_of(store, DAVE) == []


class _Switchable:
    """A session factory that is the real one until ``down`` is set, then one bound to a real
    engine where no database listens (every use raises OperationalError)."""

    def __init__(self, up: sessionmaker[Session], down: sessionmaker[Session]) -> None:
        self.up, self.down_factory, self.down = up, down, False

    def __call__(self) -> Session:
        return (self.down_factory if self.down else self.up)()


def test_smtp_check_failing_after_storing_answers_451_and_keeps_nothing(
    smtp_world: None, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    down = Settings(database_url="postgresql://postgres@127.0.0.1:9/none", _env_file=None)  # type: ignore[call-arg]
    engine = make_engine(down, connect_args={"connect_timeout": 2})
    factory = _Switchable(session_factory, make_session_factory(engine))
    store = MaildirStore(settings.maildir_root, hostname=settings.hostname)
    running = IngressThread(settings, factory, store, greet_delay=0.05).start()  # type: ignore[arg-type]
    try:
        before = all_message_files(Path(settings.maildir_root))
        client = _start_data(running.port, [ADDRESSES["team"]])  # two copies
        factory.down = True
        assert client.cmd(b".\r\n").startswith("451 4.3.0 ")
        client.close()
        assert all_message_files(Path(settings.maildir_root)) == before
    finally:
        factory.down = False
        running.stop()
        engine.dispose()
