"""Running the edges: all three in one event loop, or one edge in N prefork worker processes.

Theory of operation. ``run_services`` builds the engine, session factory and Maildir store from
settings, starts the requested edges (and, for ``delivery``, one outbound delivery agent as a
task) on one asyncio loop and waits for SIGINT or SIGTERM. Then
it drains: every edge stops accepting at once, SMTP lets transactions in progress finish (a
message is only ever answered 250 after it is fsync'd, so nothing accepted is lost), the portal
finishes its requests, and the process exits 0.

``run_prefork`` is a small supervisor for ``mailhost smtp|pop3|web --workers N``: it forks N
workers that each run ``run_services`` for one edge. SMTP and POP3 workers each bind their own
listening socket with SO_REUSEPORT (the kernel spreads connections over them); web workers share
one socket the supervisor bound before forking. ``mailhost.supervisor.Supervisor`` restarts a
worker that dies (with back-off), passes SIGTERM on to every worker and waits for them to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from app import event_loop, hourly, metrics
from app.config import Settings
from app.db import make_engine, make_session_factory
from app.maildir import MaildirStore
from app.readiness import ready_line
from mailhost.metrics_server import MetricsServer
from mailhost.supervisor import Supervisor

log = logging.getLogger("mailhost.serve")

KINDS = ("smtp", "pop3", "web", "submission")
# What `mailhost serve` runs: every edge and one delivery worker (the outbound queue).
SERVE_KINDS = ("smtp", "pop3", "web", "submission", "delivery")
# Seconds the portal gives requests in flight before cancelling them on shutdown.
WEB_GRACEFUL_SECONDS = 30


def bind_tcp(
    host: str, port: int, *, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    """A bound (and listening) TCP socket for ``host:port``, IPv4 or IPv6."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen:
            sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def _web_server(app: Any, settings: Settings) -> Any:
    """A uvicorn Server that leaves signal handling to us (we drain all edges together)."""
    import uvicorn

    class _Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    config = uvicorn.Config(
        app,
        log_level=settings.log_level.lower(),
        lifespan="auto",
        timeout_graceful_shutdown=WEB_GRACEFUL_SECONDS,
        server_header=False,
        # Log through the root logger the CLI configured, in the same format as the rest.
        log_config=None,
    )
    return _Server(config)


def _edge_ports(kind: str, edge: Any) -> dict[str, int]:
    """The edge's listeners by name: ``{"smtp": 2525}``, ``{"pop3": 1110, "pop3s": 995}``."""
    ports = getattr(edge, "ports", None)
    if isinstance(ports, dict):  # Pop3Server: {"pop3": 1110, "pop3s": 995}
        return {str(name): int(p) for name, p in ports.items() if p}
    if ports is not None:
        return {kind if i == 0 else f"{kind}{i}": int(p) for i, p in enumerate(ports)}
    return {kind: int(edge.port)}


def with_development_certificate(settings: Settings) -> Settings:
    """``settings``, with a self-signed certificate under ./var/tls when none is configured
    (made once, as ``mailhost cert`` does): submission needs TLS (AUTH only after it), and
    the README tour must work with the embedded defaults. Only submission gets it: the MX and
    POP3 keep behaving as configured. Production sets MAILHOST_TLS_CERT_FILE / _KEY_FILE."""
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        return settings
    from app.tls import generate_self_signed

    cert, key = Path("./var/tls/cert.pem").resolve(), Path("./var/tls/key.pem").resolve()
    if not (cert.exists() and key.exists()):
        generate_self_signed(cert, key, hostname=settings.hostname)
        log.warning(
            "no TLS certificate configured: wrote a self-signed development certificate to %s "
            "for submission (set MAILHOST_TLS_CERT_FILE and MAILHOST_TLS_KEY_FILE in production)",
            cert,
        )
    return settings.model_copy(update={"tls_cert_file": cert, "tls_key_file": key})


async def run_services(
    settings: Settings,
    kinds: Sequence[str],
    *,
    web_socket: socket.socket | None = None,
    on_ready: Callable[[dict[str, list[int]]], None] | None = None,
    metrics_listener: bool = False,
    periodic: bool = True,
) -> int:
    """Run the edges in ``kinds`` until SIGINT/SIGTERM; returns the exit status.

    ``metrics_listener``: also serve MAILHOST_METRICS_PORT (when set) from this process; a
    prefork worker leaves that to its supervisor. ``periodic``: where the portal or a
    delivery agent runs, be a candidate for the periodic jobs (app/periodic.py); of N web
    workers only worker 0 is."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    engine = make_engine(settings)
    factory = make_session_factory(engine)
    store = MaildirStore(settings.maildir_root, hostname=settings.hostname)
    # Every worker start, not only the supervisor's: a worker killed with SIGKILL leaves its
    # half-written deliveries in tmp/ and its replacement is the next chance to clean them.
    # Only files older than DEFAULT_STALE_TMP_SECONDS go, so a sibling's delivery in progress
    # stays; none of them is ever delivered.
    removed = await asyncio.to_thread(store.clean_tmp)
    if removed:
        log.warning("removed %d stale file(s) from tmp/", removed)
    metrics.worker_started()
    stoppers: list[Callable[[], Awaitable[None]]] = []
    listening: dict[str, list[int]] = {}
    named: dict[str, dict[str, int]] = {}  # kind -> listener name -> port
    if metrics_listener and settings.metrics_port is not None:
        metrics_server = _metrics_server(settings, kinds, factory)
        named["metrics"] = {"metrics": metrics_server.port}

        async def stop_metrics() -> None:
            await asyncio.to_thread(metrics_server.stop)

        stoppers.append(stop_metrics)

    async def flush_hourly_counts() -> None:
        while True:
            await asyncio.sleep(hourly.FLUSH_INTERVAL)
            await asyncio.to_thread(hourly.flush, factory)

    hourly_task = asyncio.create_task(flush_hourly_counts(), name="hourly-counters")

    async def stop_hourly() -> None:
        # Last of all (stoppers run together, so after the edges drained: see below).
        hourly_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hourly_task

    web_task: asyncio.Task[None] | None = None
    status = 0
    try:
        # Edges are imported here, not at module level, so provisioning commands work without
        # pulling in aiosmtpd or FastAPI.
        if "smtp" in kinds:
            from smtp_ingress.server import SmtpIngress

            smtp = SmtpIngress(settings, session_factory=factory, store=store)
            await smtp.start()
            stoppers.append(smtp.stop)
            named["smtp"] = _edge_ports("smtp", smtp)
        if "pop3" in kinds:
            from pop3_service.server import Pop3Server

            pop3 = Pop3Server(settings, session_factory=factory, store=store)
            await pop3.start()
            stoppers.append(pop3.stop)
            named["pop3"] = _edge_ports("pop3", pop3)
        if "submission" in kinds:
            from smtp_submission.server import SmtpSubmission

            submission = SmtpSubmission(
                await asyncio.to_thread(with_development_certificate, settings),
                session_factory=factory,
                store=store,
            )
            await submission.start()
            stoppers.append(submission.stop)
            named["submission"] = submission.ports
        if "delivery" in kinds:
            from app.spool import SpoolStore
            from smtp_outbound.agent import DeliveryAgent

            agent = DeliveryAgent(
                settings, factory, spool=SpoolStore(settings.spool_root), store=store
            )
            agent_stop = asyncio.Event()
            agent_task = asyncio.create_task(agent.run(agent_stop), name="delivery")

            async def stop_agent() -> None:
                # The round in progress is finished (its outcomes recorded), then it ends.
                agent_stop.set()
                await agent_task

            stoppers.append(stop_agent)
        if "web" in kinds:
            from web.app import create_app

            sock = web_socket or bind_tcp(settings.web_host, settings.web_port)
            web_port = int(sock.getsockname()[1])
            server = _web_server(
                create_app(settings, session_factory=factory, store=store), settings
            )
            web_task = asyncio.create_task(server.serve(sockets=[sock]), name="web")
            while not server.started:
                if web_task.done():
                    web_task.result()  # raises what went wrong
                    raise RuntimeError("the portal stopped during startup")
                await asyncio.sleep(0.02)

            async def stop_web() -> None:
                server.should_exit = True
                assert web_task is not None
                await web_task

            stoppers.append(stop_web)
            named["web"] = {"web": web_port}
        if periodic and {"web", "delivery"} & set(kinds):
            # A candidate: one process per database runs them (app/periodic_lock.py).
            from app import periodic as periodic_jobs

            stoppers.append(periodic_jobs.start(settings, factory, store))

        listening = {kind: list(ports.values()) for kind, ports in named.items()}
        _announce(settings, kinds, named)
        if on_ready is not None:
            on_ready(listening)
        waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(stop.wait())]
        if web_task is not None:
            waiters.append(web_task)
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if web_task is not None and web_task in done:
            log.error("the portal stopped unexpectedly; shutting down")
            status = 1
        for waiter in waiters:
            if waiter is not web_task:
                waiter.cancel()
        log.info("shutting down: no new connections, draining those in progress")
    finally:
        results = await asyncio.gather(*(s() for s in stoppers), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.error("error while stopping: %r", result)
                status = 1
        await stop_hourly()
        await asyncio.to_thread(hourly.flush, factory)  # what the drained edges counted
        await asyncio.to_thread(engine.dispose)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log.info("stopped")
    return status


def _announce(settings: Settings, kinds: Sequence[str], named: dict[str, dict[str, int]]) -> None:
    hosts = {
        "smtp": settings.smtp_host,
        "pop3": settings.pop3_host,
        "web": settings.web_host,
        "submission": settings.submission_host,
        "metrics": settings.metrics_host,
    }
    for kind, ports in named.items():
        for port in ports.values():
            where = f"http://{hosts[kind]}:{port}/" if kind == "web" else f"{hosts[kind]}:{port}"
            log.info("%s listening on %s", kind, where)
    service = kinds[0] if len(kinds) == 1 else "serve"
    listeners = [
        (name, hosts[kind], port) for kind, ports in named.items() for name, port in ports.items()
    ]
    line = ready_line(service, os.getpid(), listeners)
    # One write of the whole line: the log writer thread shares stderr (print() would write
    # the text and its newline separately, and a log record could land in between).
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _metrics_dir(settings: Settings, kinds: Sequence[str]) -> Path:
    """This service's multiprocess directory: one per service, so `mailhost smtp` starting
    (and emptying its directory) never wipes what `mailhost pop3` counted."""
    return settings.metrics_dir / (kinds[0] if len(kinds) == 1 else "serve")


def _metrics_server(settings: Settings, kinds: Sequence[str], factory: Any) -> MetricsServer:
    """Start the metrics listener; queue figures only where the portal or delivery runs
    (they are platform-wide: one scrape target for them is enough), scanner readiness where
    mail is scanned (the MX, submission) or shown (the portal)."""
    from app import health

    assert settings.metrics_port is not None
    scans = bool({"smtp", "submission", "web"} & set(kinds))
    server = MetricsServer(
        settings.metrics_host,
        settings.metrics_port,
        session_factory=factory,
        maildir_root=settings.maildir_root,
        queue=bool({"web", "delivery"} & set(kinds)),
        scanners=health.scanner_checks(settings) if scans else (),
    )
    server.start()
    return server


def run(settings: Settings, kinds: Sequence[str]) -> int:
    """Run ``kinds`` in this process until a signal; the exit status."""
    metrics.enable_multiprocess(_metrics_dir(settings, kinds))
    return event_loop.run(
        run_services(settings, kinds, metrics_listener=True), choice=settings.event_loop
    )


# ---------------------------------------------------------------------------- prefork
def _reserve_ports(settings: Settings, kind: str) -> tuple[Settings, list[socket.socket]]:
    """Pin port 0 to one real port that every worker then binds with SO_REUSEPORT.

    The reserving socket is bound but never listens, so the kernel hands it no connections;
    it keeps the port ours while workers come and go.
    """
    fields = {
        "smtp": ["smtp_port"],
        "pop3": ["pop3_port", "pop3s_port"],
        "submission": ["submission_port", "submissions_port"],
    }[kind]
    host = {
        "smtp": settings.smtp_host,
        "pop3": settings.pop3_host,
        "submission": settings.submission_host,
    }[kind]
    update: dict[str, int] = {}
    held: list[socket.socket] = []
    for name in fields:
        port = getattr(settings, name)
        if port is None:
            continue
        sock = bind_tcp(host, int(port), reuse_port=True, listen=False)
        held.append(sock)
        update[name] = int(sock.getsockname()[1])
    return settings.model_copy(update=update), held


def _worker_main(
    settings: Settings, kind: str, web_socket: socket.socket | None, slot: int
) -> None:
    # The supervisor has already reset the inherited signal handlers (see Supervisor).
    # Periodic jobs in one worker only (slot 0; its replacement keeps the slot).
    sys.exit(
        event_loop.run(
            run_services(settings, (kind,), web_socket=web_socket, periodic=slot == 0),
            choice=settings.event_loop,
        )
    )


def run_prefork(settings: Settings, kind: str, workers: int) -> int:
    """Run one edge in ``workers`` processes (in this process when ``workers`` is 1)."""
    if kind not in KINDS:
        raise ValueError(kind)
    if workers <= 1:
        return run(settings, (kind,))

    held: list[socket.socket] = []
    web_socket: socket.socket | None = None
    if kind == "web":
        web_socket = bind_tcp(settings.web_host, settings.web_port)
        held.append(web_socket)
    else:
        settings, held = _reserve_ports(settings, kind)
    # Before the first fork: every worker inherits the directory and writes its own files.
    metrics.enable_multiprocess(_metrics_dir(settings, (kind,)))
    metrics_server: MetricsServer | None = None
    engine = None
    try:
        if settings.metrics_port is not None:
            # The supervisor serves the sum of its workers (the scrape reads their files).
            engine = make_engine(settings)
            metrics_server = _metrics_server(settings, (kind,), make_session_factory(engine))
            line = ready_line(
                "metrics",
                os.getpid(),
                [("metrics", settings.metrics_host, metrics_server.port)],
            )
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
        supervisor = Supervisor(
            name=kind,
            workers=workers,
            target=lambda slot: _worker_main(settings, kind, web_socket, slot),
            on_exit=metrics.mark_process_dead,
        )
        return supervisor.run()
    finally:
        if metrics_server is not None:
            metrics_server.stop()
        if engine is not None:
            engine.dispose()
        for sock in held:
            sock.close()
