"""``python -m smtp_ingress``: one ingress worker process, settings from the environment.

Prints the readiness line ``ready smtp pid=<pid> smtp=<host>:<port>`` (``app.readiness``) on
stdout once listening (the tests and the bench wait for it) and stops gracefully on SIGTERM /
SIGINT (``app.edge_main``). Several such processes may share a fixed port (SO_REUSEPORT); the
``mailhost`` CLI supervises them in production.
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.edge_main import run_edge
from app.maildir import MaildirStore
from smtp_ingress.server import SmtpIngress


def _build(settings: Settings, factory: sessionmaker[Session], store: MaildirStore) -> SmtpIngress:
    return SmtpIngress(settings, session_factory=factory, store=store)


def _listeners(server: SmtpIngress) -> list[tuple[str, str, int]]:
    return [("smtp", server.settings.smtp_host, server.port)]


def main() -> None:
    run_edge(service="smtp", build=_build, listeners=_listeners)


if __name__ == "__main__":
    main()
