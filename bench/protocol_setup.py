"""Cost of building the ingress protocol object for one new connection: ``SmtpIngress``'s
real factory (``IngressSMTP`` over ``PreparedSMTP``) against the same class on aiosmtpd's
stock ``SMTP.__init__`` (introspection per connection), alternating rounds in one run.

No sockets: the factory is called as the event loop calls it for an accepted connection.

Usage: .venv/bin/python bench/protocol_setup.py [--objects 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aiosmtpd.smtp import SMTP  # noqa: E402

from app.config import Settings  # noqa: E402
from app.db import make_engine, make_session_factory  # noqa: E402
from app.maildir import MaildirStore  # noqa: E402
from smtp_ingress import protocol  # noqa: E402
from smtp_ingress.server import SmtpIngress  # noqa: E402


def _stock_prepared_init(self: protocol.IngressSMTP, handler: object, **kwargs: object) -> None:
    SMTP.__init__(self, handler, **kwargs)  # type: ignore[arg-type]


async def measure(objects: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(
            database_url=f"sqlite:///{folder}/bench.db",
            maildir_root=Path(folder) / "mail",
            _env_file=None,  # type: ignore[call-arg]
        )
        ingress = SmtpIngress(
            settings,
            session_factory=make_session_factory(make_engine(settings)),
            store=MaildirStore(settings.maildir_root),
        )
        prepared_init = protocol.PreparedSMTP.__init__
        times: dict[str, list[float]] = {"prepared": [], "stock": []}
        for _ in range(rounds):
            for name in ("stock", "prepared"):
                protocol.PreparedSMTP.__init__ = (  # type: ignore[method-assign]
                    _stock_prepared_init if name == "stock" else prepared_init
                )
                try:
                    start = time.perf_counter()
                    for _ in range(objects):
                        ingress._make_protocol()
                    times[name].append((time.perf_counter() - start) / objects * 1e6)
                finally:
                    protocol.PreparedSMTP.__init__ = prepared_init  # type: ignore[method-assign]
                ingress._tracker.protocols.clear()
        stock, prepared = (statistics.median(times[n]) for n in ("stock", "prepared"))
        print(
            f"protocol object per connection: stock SMTP.__init__ {stock:.0f} us,"
            f" PreparedSMTP {prepared:.0f} us ({stock / prepared:.1f}x less);"
            f" medians of {rounds} alternating rounds of {objects}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs AUTH per object
    asyncio.run(measure(args.objects, args.rounds))


if __name__ == "__main__":
    main()
