"""``python -m smtp_outbound``: one delivery worker with the settings from the environment."""

from __future__ import annotations

import asyncio
import signal

from app import event_loop, periodic
from app.config import Settings
from app.db import make_engine, make_session_factory
from app.logsetup import start_logging
from app.maildir import MaildirStore
from app.spool import SpoolStore
from smtp_outbound.agent import DeliveryAgent


async def serve(settings: Settings) -> None:
    """Run one agent until SIGTERM or SIGINT; the round in progress is finished first. The
    process is also a candidate for the periodic jobs (app/periodic.py: queue samples, the
    daily storage snapshot, pruning), so a deployment without the portal still has them."""
    engine = make_engine(settings)
    stop_periodic = None
    try:
        factory = make_session_factory(engine)
        store = MaildirStore(settings.maildir_root, hostname=settings.hostname)
        agent = DeliveryAgent(settings, factory, spool=SpoolStore(settings.spool_root), store=store)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        stop_periodic = periodic.start(settings, factory, store)
        await agent.run(stop)
    finally:
        if stop_periodic is not None:
            await stop_periodic()
        engine.dispose()


def main() -> None:
    settings = Settings()
    start_logging(settings.log_level)
    event_loop.run(serve(settings), choice=settings.event_loop)


if __name__ == "__main__":
    main()
