"""The process shell every edge's ``python -m`` entry shares: engine, store, readiness line,
graceful stop on SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Protocol, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from app import event_loop
from app.config import Settings
from app.db import make_engine, make_session_factory
from app.logsetup import start_logging
from app.maildir import MaildirStore
from app.readiness import ready_line


class EdgeServer(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


S = TypeVar("S", bound=EdgeServer)


async def serve_edge(
    settings: Settings,
    *,
    service: str,
    build: Callable[[Settings, sessionmaker[Session], MaildirStore], S],
    listeners: Callable[[S], list[tuple[str, str, int]]],
) -> None:
    """Start the server, print ``ready <service> pid=... <name>=<host>:<port>...`` (the tests,
    the bench and the supervisor wait for it), serve until SIGTERM / SIGINT, stop gracefully."""
    engine = make_engine(settings)
    try:
        store = MaildirStore(settings.maildir_root, hostname=settings.hostname)
        server = build(settings, make_session_factory(engine), store)
        await server.start()
        print(ready_line(service, os.getpid(), listeners(server)), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()
    finally:
        engine.dispose()


def run_edge(
    *,
    service: str,
    build: Callable[[Settings, sessionmaker[Session], MaildirStore], S],
    listeners: Callable[[S], list[tuple[str, str, int]]],
) -> None:
    """``main()`` of an edge: settings from the environment, logging, the loop
    (MAILHOST_EVENT_LOOP)."""
    settings = Settings()
    start_logging(settings.log_level)
    event_loop.run(
        serve_edge(settings, service=service, build=build, listeners=listeners),
        choice=settings.event_loop,
    )
