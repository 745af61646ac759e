"""``python -m smtp_ingress``: one ingress worker process, settings from the environment.

Prints ``ready pid=<pid> port=<port>`` on stdout once listening (the tests and the bench wait
for it) and stops gracefully on SIGTERM / SIGINT. Several such processes may share a fixed
port (SO_REUSEPORT); the ``mailhost`` CLI supervises them in production.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import queue
import signal
import sys

from app.config import Settings
from app.db import make_engine, make_session_factory
from app.maildir import MaildirStore
from smtp_ingress.server import SmtpIngress


async def _serve(settings: Settings) -> None:
    engine = make_engine(settings)
    store = MaildirStore(settings.maildir_root, hostname=settings.hostname)
    ingress = SmtpIngress(
        settings,
        session_factory=make_session_factory(engine),
        store=store,
    )
    await ingress.start()
    print(f"ready pid={os.getpid()} port={ingress.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await ingress.stop()
    engine.dispose()


def main() -> None:
    settings = Settings()
    # Records go through a queue to a listener thread that formats and writes them, so the
    # event loop never blocks on log I/O (a full pipe to a slow supervisor, a slow disk).
    output = logging.StreamHandler(sys.stderr)
    output.setFormatter(
        logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
    )
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, output)
    logging.basicConfig(
        level=settings.log_level.upper(), handlers=[logging.handlers.QueueHandler(records)]
    )
    # aiosmtpd logs every command line at INFO; our own transaction lines are enough.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    listener.start()
    try:
        asyncio.run(_serve(settings))
    finally:
        listener.stop()  # writes what is still queued


if __name__ == "__main__":
    main()
