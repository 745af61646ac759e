"""``python -m smtp_ingress``: one ingress worker process, settings from the environment.

Prints the readiness line ``ready smtp pid=<pid> smtp=<host>:<port>`` (``app.readiness``) on
stdout once listening (the tests and the bench wait for it) and stops gracefully on SIGTERM /
SIGINT. Several such processes may share a fixed port (SO_REUSEPORT); the ``mailhost`` CLI
supervises them in production.
"""

from __future__ import annotations

import asyncio
import os
import signal

from app.config import Settings
from app.db import make_engine, make_session_factory
from app.logsetup import start_logging
from app.maildir import MaildirStore
from app.readiness import ready_line
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
    listeners = [("smtp", settings.smtp_host, ingress.port)]
    print(ready_line("smtp", os.getpid(), listeners), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await ingress.stop()
    engine.dispose()


def main() -> None:
    settings = Settings()
    start_logging(settings.log_level)
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
