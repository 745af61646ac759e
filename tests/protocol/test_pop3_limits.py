"""POP3 connection limits (total and per client address) and login counting, over raw sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MaildirStore
from app.services import stats
from tests.factories import DEFAULT_PASSWORD, seed_mailbox
from tests.protocol.pop3_helpers import TIMEOUT, RawClient, ServerThread, running_server

ALICE = "alice@a.example"
FULL = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
FULL_IP = b"-ERR [SYS/TEMP] Too many connections from your address\r\n"


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A raw connection from a chosen loopback address (Linux routes all of 127/8 locally)."""
    return socket.create_connection(
        ("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0)
    )


def greeting_and_eof(sock: socket.socket) -> tuple[bytes, bool]:
    """The first line the server sends, and whether it then closed the connection."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    rest = sock.recv(1024)
    return data, rest == b""


def wait_admitted(port: int, source: str = "127.0.0.1") -> socket.socket:
    """Connect until greeted with +OK: a slot is freed when the server sees the close."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        sock = connect(port, source)
        line = sock.recv(1024)
        if line.startswith(b"+OK"):
            return sock
        sock.close()
        assert time.monotonic() < deadline, line
        time.sleep(0.05)


@pytest.fixture
def limited(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> Iterator[ServerThread]:
    seed_mailbox(session_factory, ALICE)
    cfg = settings.model_copy(update={"pop3_max_connections": 3, "pop3_max_connections_per_ip": 2})
    with running_server(cfg, session_factory=session_factory, store=store) as server:
        yield server


def test_per_address_limit_refuses_with_sys_temp_and_frees_slots(limited: ServerThread) -> None:
    port = limited.port
    first, second = RawClient(port), RawClient(port)
    assert first.greeting.startswith(b"+OK") and second.greeting.startswith(b"+OK")
    refused = connect(port)
    assert greeting_and_eof(refused) == (FULL_IP, True)
    refused.close()
    # Another address is still welcome while 127.0.0.1 is at its limit.
    other = connect(port, "127.0.0.2")
    assert other.recv(1024).startswith(b"+OK")
    # A session that ends (QUIT, or a plain drop) gives its slot back.
    first.cmd("QUIT")
    first.close()
    again = wait_admitted(port)
    again.close()
    second.close()
    other.close()


def test_total_limit_counts_every_address(limited: ServerThread) -> None:
    port = limited.port
    held = [connect(port, "127.0.0.1"), connect(port, "127.0.0.2"), connect(port, "127.0.0.3")]
    for sock in held:
        assert sock.recv(1024).startswith(b"+OK")
    refused = connect(port, "127.0.0.4")
    assert greeting_and_eof(refused) == (FULL, True)
    refused.close()
    # Refused connections never took a slot: after the three close, three are admitted again.
    for sock in held:
        sock.close()
    admitted = [wait_admitted(port, f"127.0.0.{n}") for n in (1, 2, 3)]
    for sock in admitted:
        sock.close()


def test_logins_are_counted_only_when_the_session_enters_transaction(
    limited: ServerThread, session_factory: sessionmaker[Session]
) -> None:
    def logins() -> int:
        with transaction(session_factory) as db:
            return stats.get(db, metric="pop3_logins")

    first = RawClient(limited.port)
    assert first.login(ALICE, DEFAULT_PASSWORD).startswith(b"+OK Logged in")
    assert logins() == 1
    second = RawClient(limited.port)
    assert second.login(ALICE, DEFAULT_PASSWORD).startswith(b"-ERR [IN-USE]")
    assert logins() == 1  # the refused login is not a login
    assert second.login(ALICE, "wrong password").startswith(b"-ERR [AUTH]")
    assert logins() == 1
    first.cmd("QUIT")
    first.close()
    assert second.login(ALICE, DEFAULT_PASSWORD).startswith(b"+OK Logged in")
    assert logins() == 2
    second.cmd("QUIT")
    second.close()
