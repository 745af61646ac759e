"""Helpers for POP3 protocol tests: a real Pop3Server on port 0 in a background thread,
message delivery through the Maildir store, and a tiny raw-socket client."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.maildir import MailboxRef, MaildirStore, MessageInfo
from pop3_service.server import Pop3Server

TIMEOUT = 10.0


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_curl() -> str:
    """Path of curl; a skip locally when missing, a failure in CI (it must be installed)."""
    path = shutil.which("curl")
    if path is None:
        if in_ci():
            pytest.fail("curl is not installed (CI must install it: apt-get install curl)")
        pytest.skip("curl is not installed")
    return path


def require_mpop() -> str:
    """Path of mpop; a skip locally when missing, a failure in CI (it must be installed)."""
    path = shutil.which("mpop")
    if path is None:
        if in_ci():
            pytest.fail("mpop is not installed (CI must install it: apt-get install mpop)")
        pytest.skip("mpop is not installed")
    return path


class ServerThread:
    """A Pop3Server running on its own event loop in a daemon thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        session_factory: sessionmaker[Session],
        store: MaildirStore,
        **kwargs: Any,
    ) -> None:
        self.server = Pop3Server(settings, session_factory=session_factory, store=store, **kwargs)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="pop3-test-server", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as exc:  # surfaced in start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(TIMEOUT)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop)
        future.result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)

    @property
    def port(self) -> int:
        return self.server.port


@contextmanager
def running_server(
    settings: Settings,
    *,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    **kwargs: Any,
) -> Iterator[ServerThread]:
    thread = ServerThread(settings, session_factory=session_factory, store=store, **kwargs)
    thread.start()
    try:
        yield thread
    finally:
        thread.stop()


def ref(address: str) -> MailboxRef:
    local, _, domain = address.partition("@")
    return MailboxRef(domain=domain.lower(), local_part=local)


def deliver(store: MaildirStore, address: str, *messages: bytes) -> list[MessageInfo]:
    """Store messages (LF line endings) as the SMTP ingress would, in order."""
    infos: list[MessageInfo] = []
    for data in messages:
        infos += store.deliver([(ref(address), [data])])
    return infos


def to_wire(data: bytes) -> bytes:
    """What RETR must send for a message Mailhost stored (before dot-stuffing)."""
    return data.replace(b"\n", b"\r\n")


def reference_wire(stored: bytes, *, crlf_source: bool = False) -> bytes:
    """RFC 1939 section 3 done the slow, obvious way, line by line: the RETR body and ".".

    ``crlf_source``: a foreign (Postfix, Dovecot) file, where CRLF is a line end like LF.
    """
    lines = stored.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the file ended with a line end: no partial last line
    out: list[bytes] = []
    for number, line in enumerate(lines):
        ended = number < len(lines) - 1 or stored.endswith(b"\n")
        if crlf_source and ended and line.endswith(b"\r"):
            line = line[:-1]
        out.append((b"." + line if line.startswith(b".") else line) + b"\r\n")
    out.append(b".\r\n")
    return b"".join(out)


class RawClient:
    """Line-oriented POP3 over a plain socket, for what poplib cannot express."""

    def __init__(self, port: int, *, tls: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="127.0.0.1")
        self.sock = sock
        self.file = sock.makefile("rb")
        self.greeting = self.line()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: str | bytes) -> bytes:
        raw = line.encode() if isinstance(line, str) else line
        self.send(raw + b"\r\n")
        return self.line()

    def line(self) -> bytes:
        return self.file.readline().rstrip(b"\r\n")

    def multiline_raw(self) -> bytes:
        """Raw bytes of a multi-line body up to and including the '.' line."""
        chunks: list[bytes] = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("EOF inside a multi-line response")
            chunks.append(line)
            if line == b".\r\n":
                return b"".join(chunks)

    def login(self, user: str, password: str) -> bytes:
        self.cmd(f"USER {user}")
        return self.cmd(f"PASS {password}")

    def at_eof(self) -> bool:
        return self.file.read(1) == b""

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def client_tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
