"""The submission server: a STARTTLS listener (587) and an implicit-TLS listener (465)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.connlimit import ConnectionCounter
from app.maildir import MaildirStore
from app.spool import SpoolStore
from app.tls import server_context
from app.tracking import EventWriter
from smtp_submission.handler import SubmissionHandler
from smtp_submission.protocol import SubmissionSMTP

log = logging.getLogger("smtp_submission")

# Threads for password hashing, database calls and fsyncs (argon2 releases the GIL).
IO_THREADS = 16
# stop(): how long connections may go on before they are cut.
DEFAULT_STOP_GRACE = 10.0


class SmtpSubmission:
    """``await start()``, read ``ports`` (``submission`` and ``submissions``), ``await stop()``."""

    def __init__(
        self,
        settings: Settings,
        *,
        session_factory: sessionmaker[Session],
        store: MaildirStore,
        spool: SpoolStore | None = None,
        stop_grace: float = DEFAULT_STOP_GRACE,
    ) -> None:
        tls = server_context(settings)
        if tls is None:
            raise ValueError(
                "submission needs a TLS certificate: set MAILHOST_TLS_CERT_FILE and "
                "MAILHOST_TLS_KEY_FILE (mailhost cert writes a development one)"
            )
        self.settings = settings
        self._tls: ssl.SSLContext = tls
        self._stop_grace = stop_grace
        self._executor = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="submission-io")
        self._handler = SubmissionHandler(
            settings,
            session_factory=session_factory,
            store=store,
            spool=spool or SpoolStore(settings.spool_root),
            executor=self._executor,
            tracking=EventWriter.from_settings(settings, session_factory),
        )
        self._servers: dict[str, asyncio.Server] = {}
        self._protocols: set[SubmissionSMTP] = set()
        self._connections = ConnectionCounter(
            max_total=settings.submission_max_connections,
            max_per_address=settings.submission_max_connections_per_ip,
        )

    def _protocol(self, *, implicit_tls: bool) -> SubmissionSMTP:
        protocol = SubmissionSMTP(
            self._handler,
            implicit_tls=implicit_tls,
            connections=self._connections,
            tls_context=None if implicit_tls else self._tls,
            data_size_limit=self.settings.smtp_max_message_size,
            enable_SMTPUTF8=False,
            decode_data=False,
            hostname=self.settings.hostname,
            ident="ESMTP Mailhost submission",
            timeout=self.settings.smtp_idle_timeout,
            loop=asyncio.get_running_loop(),
        )
        self._protocols.add(protocol)
        return protocol

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host = self.settings.submission_host
        self._servers["submission"] = await loop.create_server(
            lambda: self._protocol(implicit_tls=False),
            host=host,
            port=self.settings.submission_port,
            reuse_port=True,
        )
        if self.settings.submissions_port is not None:
            self._servers["submissions"] = await loop.create_server(
                lambda: self._protocol(implicit_tls=True),
                host=host,
                port=self.settings.submissions_port,
                ssl=self._tls,
                reuse_port=True,
            )
        self._handler.tracking.start()
        log.info("SMTP submission listening on %s %s", host, self.ports)

    @property
    def ports(self) -> dict[str, int]:
        if not self._servers:
            raise RuntimeError("SmtpSubmission is not started")
        return {
            name: int(server.sockets[0].getsockname()[1]) for name, server in self._servers.items()
        }

    @property
    def port(self) -> int:
        return self.ports["submission"]

    async def stop(self) -> None:
        """Stop accepting; give open sessions the grace period, then close them. A message
        whose DATA job already runs is finished by the executor (stored, then the client,
        cut off before its 250, retries: a duplicate, never a loss)."""
        for server in self._servers.values():
            server.close()
        self._servers = {}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._stop_grace
        while loop.time() < deadline and any(
            p.transport is not None and not p.transport.is_closing() for p in self._protocols
        ):
            await asyncio.sleep(0.05)
        for protocol in list(self._protocols):
            transport = protocol.transport
            if transport is not None and not transport.is_closing():
                transport.close()
        self._protocols.clear()
        await asyncio.sleep(0.05)  # let the closed sessions' tasks end
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        await asyncio.to_thread(self._handler.tracking.stop)
