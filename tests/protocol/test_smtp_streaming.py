"""Streamed DATA (issue 10, Major 6): a pathological 40 MiB message of 2-octet lines while
other clients are greeted, large bodies stored byte-exactly for every recipient, and no
spill file left behind by an oversize, a vanished client or the DATA deadline."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from app.maildir import MaildirStore
from tests.protocol.smtp_helpers import (
    ADDRESSES,
    IngressThread,
    RawClient,
    new_messages,
    ref,
)

MIB = 1024 * 1024


def _pathological(size: int) -> tuple[bytes, bytes]:
    """(wire body ending in CRLF, what a Maildir must hold): 2-octet lines, and every
    thousandth line a lone dot, stuffed on the wire (RFC 5321 section 4.5.2)."""
    header = b"Subject: empty lines\r\n\r\n"
    block = b"\r\n" * 999 + b"..\r\n"
    wire = header + block * ((size - len(header)) // len(block))
    stored = wire.replace(b"\r\n..\r\n", b"\r\n.\r\n").replace(b"\r\n", b"\n")
    return wire, stored


def _tmp_files(store: MaildirStore, address: str) -> list[str]:
    tmp = store.mailbox_path(ref(address)) / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


def _wait_for_no_tmp(store: MaildirStore, address: str) -> list[str]:
    # The spill file is removed off the event loop: give that job time to run.
    deadline = time.monotonic() + 10
    while _tmp_files(store, address) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _tmp_files(store, address)


def _start_data(client: RawClient, *rcpts: str) -> None:
    assert client.cmd("EHLO client.example").startswith("250")
    assert client.cmd("MAIL FROM:<sender@remote.example>").startswith("250")
    for rcpt in rcpts:
        assert client.cmd(f"RCPT TO:<{rcpt}>").startswith("250")
    assert client.cmd("DATA").startswith("354")


def test_pathological_message_is_stored_while_others_are_greeted(
    smtp_world: None, smtp_start: Callable[..., IngressThread], store: MaildirStore
) -> None:
    server = smtp_start(smtp_max_message_size=50 * MIB, smtp_data_timeout=300)
    wire, stored = _pathological(40 * MIB)
    sending = threading.Event()
    outcome: dict[str, str] = {}

    def send_big() -> None:
        client = RawClient(server.port)
        client.sock.settimeout(300)
        _start_data(client, ADDRESSES["user"])
        sending.set()
        client.send(wire + b".\r\n")
        outcome["reply"] = client.reply()
        client.cmd("QUIT")
        client.close()

    sender = threading.Thread(target=send_big)
    sender.start()
    assert sending.wait(30)
    greetings = []
    while sender.is_alive():  # a second client, connecting again and again meanwhile
        other = RawClient(server.port)
        greetings.append(other.greeting)
        other.cmd("QUIT")
        other.close()
    sender.join()
    assert outcome["reply"].startswith("250 2.0.0 "), outcome
    assert greetings and all(g.startswith("220 ") for g in greetings)
    [message] = new_messages(store, ADDRESSES["user"])
    trace, _, content = message.partition(b"\nSubject: empty lines\n")
    assert trace.startswith(b"Return-Path: <sender@remote.example>\nDelivered-To: user@")
    assert b"Subject: empty lines\n" + content == stored
    assert _tmp_files(store, ADDRESSES["user"]) == []


def test_large_message_reaches_every_recipient_with_its_own_trace(
    smtp_world: None, smtp_start: Callable[..., IngressThread], store: MaildirStore
) -> None:
    server = smtp_start()
    lines = b"".join(b"line %07d .dot\r\n" % i for i in range(200_000))  # ~3.4 MB
    wire = b"Subject: big\r\n\r\n" + lines + b"..leading dot\r\n"
    client = RawClient(server.port)
    _start_data(client, ADDRESSES["team"])  # alias of user and other
    client.send(wire + b".\r\nQUIT\r\n")  # QUIT pipelined after the end of data
    assert client.reply().startswith("250 2.0.0 ")
    assert client.reply().startswith("221")
    client.close()
    expected = (wire[:-15] + b".leading dot\r\n").replace(b"\r\n", b"\n")
    for who in ("user", "other"):
        [message] = new_messages(store, ADDRESSES[who])
        trace, sep, content = message.partition(b"Subject: big\n")
        assert sep + content == expected
        lines_ = trace.decode().splitlines()
        assert lines_[0] == "Return-Path: <sender@remote.example>"
        assert lines_[1] == f"Delivered-To: {ADDRESSES[who]}"
        assert lines_[2].startswith("Received: from client.example ([127.0.0.1])")
        assert lines_[4].startswith(f"\tfor <{ADDRESSES['team']}>; ")
        assert _tmp_files(store, ADDRESSES[who]) == []
    # The S= size in the name is the stored size (what usage and POP3 listing read).
    [info] = store.list_messages(ref(ADDRESSES["user"]))
    assert info.size == len(new_messages(store, ADDRESSES["user"])[0])


def test_oversized_stream_is_refused_and_leaves_nothing(
    smtp_world: None, smtp_start: Callable[..., IngressThread], store: MaildirStore
) -> None:
    server = smtp_start(smtp_max_message_size=1 * MIB)
    client = RawClient(server.port)
    _start_data(client, ADDRESSES["user"])
    client.send(b"Subject: too big\r\n\r\n" + b"x" * 100 + b"\r\n" * (2 * MIB))
    client.send(b".\r\n")
    assert client.reply().startswith("552 5.3.4 ")
    # The session is still in sync (RFC 5321 4.2.5): the next transaction works.
    assert client.cmd("MAIL FROM:<sender@remote.example>").startswith("250")
    client.cmd("QUIT")
    client.close()
    assert new_messages(store, ADDRESSES["user"]) == []
    assert _wait_for_no_tmp(store, ADDRESSES["user"]) == []


def test_client_gone_mid_data_leaves_no_spill_file(
    smtp_world: None, smtp_start: Callable[..., IngressThread], store: MaildirStore
) -> None:
    server = smtp_start()
    client = RawClient(server.port)
    _start_data(client, ADDRESSES["user"])
    client.send(b"Subject: cut\r\n\r\n" + b"y" * 500 + b"\r\n" * MIB)  # past the memory budget
    deadline = time.monotonic() + 10
    while not _tmp_files(store, ADDRESSES["user"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _tmp_files(store, ADDRESSES["user"]), "the body was not spilled to tmp/"
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    client.close()  # RST: the client is gone
    assert _wait_for_no_tmp(store, ADDRESSES["user"]) == []
    assert new_messages(store, ADDRESSES["user"]) == []


def test_data_deadline_after_spilling_leaves_nothing(
    smtp_world: None, smtp_start: Callable[..., IngressThread], store: MaildirStore
) -> None:
    server = smtp_start(smtp_data_timeout=1.5, smtp_idle_timeout=30)
    client = RawClient(server.port)
    _start_data(client, ADDRESSES["user"])
    client.send(b"Subject: stalled\r\n\r\n" + b"z\r\n" * MIB)
    assert client.reply().startswith("421 4.4.2 ")
    assert client.closed_by_server()
    client.close()
    assert _wait_for_no_tmp(store, ADDRESSES["user"]) == []
    assert new_messages(store, ADDRESSES["user"]) == []
