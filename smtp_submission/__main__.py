"""``python -m smtp_submission``: one submission worker process, settings from the environment.

Prints ``ready submission pid=<pid> submission=<host>:<port> submissions=<host>:<port>`` on
stdout once listening and stops on SIGTERM / SIGINT.
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
from smtp_submission.server import SmtpSubmission


async def _serve(settings: Settings) -> None:
    engine = make_engine(settings)
    store = MaildirStore(settings.maildir_root, hostname=settings.hostname)
    server = SmtpSubmission(settings, session_factory=make_session_factory(engine), store=store)
    await server.start()
    listeners = [(name, settings.submission_host, port) for name, port in server.ports.items()]
    print(ready_line("submission", os.getpid(), listeners), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    engine.dispose()


def main() -> None:
    settings = Settings()
    start_logging(settings.log_level)
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
