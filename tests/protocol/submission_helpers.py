"""Submission test tools: a real ``SmtpSubmission`` on port 0 in a background thread, and
smtplib clients that trust the test certificate."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import threading
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.maildir import MaildirStore
from app.spool import SpoolStore
from smtp_submission.server import SmtpSubmission

TIMEOUT = 10.0
PASSWORD = "correct horse"  # tests.protocol.smtp_helpers.seed_world's password


class SubmissionThread:
    """A real ``SmtpSubmission`` serving from its own event loop thread."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        store: MaildirStore,
        spool: SpoolStore | None = None,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.settings = settings
        self.server: SmtpSubmission | None = None
        self._args = (settings, session_factory, store)
        self._spool = spool

    def _run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> SubmissionThread:
        self.thread.start()
        settings, factory, store = self._args

        async def make() -> SmtpSubmission:
            server = SmtpSubmission(
                settings, session_factory=factory, store=store, spool=self._spool, stop_grace=1
            )
            await server.start()
            return server

        self.server = self._run(make())
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.ports["submission"]

    @property
    def tls_port(self) -> int:
        assert self.server is not None
        return self.server.ports["submissions"]

    def stop(self) -> None:
        if self.server is not None:
            self._run(self.server.stop(), timeout=60)
            self.server = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def client_tls(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    return context


def starttls_client(port: int, cert: Path, *, login: str | None = None) -> smtplib.SMTP:
    """Connected, EHLO'd, STARTTLS'd (and logged in with ``login`` when given)."""
    client = smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT)
    client.ehlo("client.test")
    client.starttls(context=client_tls(cert))
    client.ehlo("client.test")
    if login is not None:
        client.login(login, PASSWORD)
    return client


def implicit_client(port: int, cert: Path, *, login: str | None = None) -> smtplib.SMTP_SSL:
    client = smtplib.SMTP_SSL("127.0.0.1", port, timeout=TIMEOUT, context=client_tls(cert))
    client.ehlo("client.test")
    if login is not None:
        client.login(login, PASSWORD)
    return client


def message(sender: str, to: str, subject: str = "hello", extra: str = "") -> bytes:
    return (
        f"From: Sender <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n{extra}\r\n"
        "Hello there.\r\n"
    ).encode()
