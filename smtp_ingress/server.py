"""The SMTP ingress server: binds the port (SO_REUSEPORT, so worker processes can share it),
enforces connection limits, and shuts down gracefully."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.maildir import MaildirStore
from app.scanning.scanner import Scanner
from app.spool import SpoolStore
from app.tls import server_context
from app.tracking import EventWriter
from smtp_ingress.handler import IngressHandler, StatsBatcher
from smtp_ingress.protocol import ConnectionTracker, IngressSMTP
from smtp_ingress.scanning import ScanStep

log = logging.getLogger("smtp_ingress")

# stop(): how long transactions in progress may take to finish before they are cut.
DEFAULT_STOP_GRACE = 30.0
# Threads for database look-ups and deliveries: enough that concurrent fsyncs overlap.
# Why no group commit (one thread writing a batch of messages with one directory fsync per
# batch): ``bench/disk_fsync.py --batch 8`` commits no more files per second than 8
# independent threads, because ext4's journal already merges concurrent fsyncs into one
# commit, and one thread's fsyncs issued in a row are not merged (one commit each).
IO_THREADS = 32


class SmtpIngress:
    """The MX: ``await start()``, read ``port``, ``await stop()``."""

    def __init__(
        self,
        settings: Settings,
        *,
        session_factory: sessionmaker[Session],
        store: MaildirStore,
        greet_delay: float | None = None,
        stop_grace: float = DEFAULT_STOP_GRACE,
        spool: SpoolStore | None = None,
    ) -> None:
        self.settings = settings
        self._greet_delay = greet_delay if greet_delay is not None else settings.smtp_greet_delay
        self._stop_grace = stop_grace
        self._executor = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="smtp-io")
        self._stats = StatsBatcher(session_factory, self._executor)
        self.scanner = Scanner.from_settings(settings)
        scan_step = None
        if self.scanner is not None:
            scan_step = ScanStep(
                self.scanner, authserv_id=settings.authserv_id or settings.hostname
            )
        self.tracking = EventWriter.from_settings(settings, session_factory)
        self._handler = IngressHandler(
            settings,
            session_factory=session_factory,
            store=store,
            executor=self._executor,
            stats_batcher=self._stats,
            spool=spool,
            scan_step=scan_step,
            tracking=self.tracking,
        )
        self._tracker = ConnectionTracker(
            max_total=settings.smtp_max_connections,
            max_per_ip=settings.smtp_max_connections_per_ip,
        )
        self._tls = server_context(settings)
        self._server: asyncio.Server | None = None

    def _make_protocol(self) -> IngressSMTP:
        protocol = IngressSMTP(
            self._handler,
            tracker=self._tracker,
            max_junk=self.settings.smtp_max_junk_commands,
            max_noop=self.settings.smtp_max_noop_commands,
            data_timeout=self.settings.smtp_data_timeout,
            normalize_bare_lf=self.settings.smtp_bare_lf == "normalize",
            greet_delay=self._greet_delay,
            data_size_limit=self.settings.smtp_max_message_size,
            enable_SMTPUTF8=False,
            decode_data=False,
            hostname=self.settings.hostname,
            ident="ESMTP Mailhost",
            tls_context=self._tls,
            timeout=self.settings.smtp_idle_timeout,
            loop=asyncio.get_running_loop(),
        )
        self._tracker.register(protocol)
        return protocol

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._make_protocol,
            host=self.settings.smtp_host,
            port=self.settings.smtp_port,
            reuse_port=True,
        )
        self._stats.start()
        if self.scanner is None:
            log.warning(
                "content scanning is off: set MAILHOST_SCAN_RSPAMD_ADDRESS and "
                "MAILHOST_SCAN_CLAMD_ADDRESS to scan inbound mail for spam and viruses"
            )
        self.tracking.start()
        log.info("SMTP ingress listening on %s:%d", self.settings.smtp_host, self.port)

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("SmtpIngress is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        return self._tracker.total

    async def stop(self) -> None:
        """Stop accepting, let transactions in progress finish (up to a grace period), then
        close every connection with ``421 4.3.2``."""
        if self._server is None:
            return
        self._server.close()
        for protocol in list(self._tracker.protocols):
            protocol.shutdown()
        deadline = time.monotonic() + self._stop_grace
        while self._tracker.protocols and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for protocol in list(self._tracker.protocols):
            protocol.busy = False
            protocol.shutdown()
        await asyncio.sleep(0)
        self._server = None
        await self._stats.stop()
        # Waiting for the executor's last jobs must not block the loop (other servers of
        # `mailhost serve` share it).
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        await asyncio.to_thread(self.tracking.stop)
