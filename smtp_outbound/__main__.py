"""``python -m smtp_outbound``: one delivery worker with the settings from the environment."""

from __future__ import annotations

import asyncio
import signal

from app import event_loop
from app.config import Settings
from app.db import make_engine, make_session_factory
from app.logsetup import start_logging
from app.maildir import MaildirStore
from app.spool import SpoolStore
from smtp_outbound.agent import DeliveryAgent


async def serve(settings: Settings) -> None:
    """Run one agent until SIGTERM or SIGINT; the round in progress is finished first."""
    engine = make_engine(settings)
    try:
        agent = DeliveryAgent(
            settings,
            make_session_factory(engine),
            spool=SpoolStore(settings.spool_root),
            store=MaildirStore(settings.maildir_root, hostname=settings.hostname),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await agent.run(stop)
    finally:
        engine.dispose()


def main() -> None:
    settings = Settings()
    start_logging(settings.log_level)
    event_loop.run(serve(settings), choice=settings.event_loop)


if __name__ == "__main__":
    main()
