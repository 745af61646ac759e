"""``python -m smtp_submission``: one submission worker process, settings from the environment.

Prints ``ready submission pid=<pid> submission=<host>:<port> submissions=<host>:<port>`` on
stdout once listening and stops on SIGTERM / SIGINT (``app.edge_main``).
"""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.edge_main import run_edge
from app.maildir import MaildirStore
from smtp_submission.server import SmtpSubmission


def _build(
    settings: Settings, factory: sessionmaker[Session], store: MaildirStore
) -> SmtpSubmission:
    return SmtpSubmission(settings, session_factory=factory, store=store)


def _listeners(server: SmtpSubmission) -> list[tuple[str, str, int]]:
    host = server.settings.submission_host
    return [(name, host, port) for name, port in server.ports.items()]


def main() -> None:
    run_edge(service="submission", build=_build, listeners=_listeners)


if __name__ == "__main__":
    main()
