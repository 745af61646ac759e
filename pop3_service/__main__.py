"""A POP3 worker process: ``python -m pop3_service`` (settings from MAILHOST_* variables).

Several workers can share one port (the listener uses SO_REUSEPORT); the composition root
(``mailhost pop3``) starts them, and tests start two to check the cross-process maildrop lock.
Prints the readiness line ``ready pop3 pid=<pid> pop3=<host>:<port> [pop3s=<host>:<port>]``
(``app.readiness``) on stdout once listening; stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from app import event_loop
from app.config import Settings
from app.db import make_engine, make_session_factory
from app.logsetup import start_logging
from app.maildir import MaildirStore
from app.readiness import ready_line
from pop3_service.locking import DEFAULT_LEASE_SECONDS
from pop3_service.server import Pop3Server

log = logging.getLogger("pop3_service")


async def _run(settings: Settings, lease_seconds: float) -> None:
    engine = make_engine(settings)
    store = MaildirStore(settings.maildir_root, hostname=settings.hostname)
    # Crash debris of killed deliveries (age-based, so a live writer's file stays; see
    # MaildirStore.clean_tmp); never delivered.
    removed = await asyncio.to_thread(store.clean_tmp)
    if removed:
        log.warning("removed %d stale file(s) from tmp/", removed)
    server = Pop3Server(
        settings,
        session_factory=make_session_factory(engine),
        store=store,
        lease_seconds=lease_seconds,
    )
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    listeners = [(name, settings.pop3_host, port) for name, port in server.ports.items()]
    print(ready_line("pop3", os.getpid(), listeners), flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pop3_service", description=__doc__)
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=DEFAULT_LEASE_SECONDS,
        help="maildrop lease length (renewed every third of it)",
    )
    args = parser.parse_args(argv)
    settings = Settings()
    start_logging(settings.log_level)
    event_loop.run(_run(settings, args.lease_seconds), choice=settings.event_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
