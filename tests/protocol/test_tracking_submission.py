"""Message tracking of submission: accepted (who logged in), each hosted copy stored, each
remote recipient queued; a refused sender with its reply and stage."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from app.services import tracking
from tests.protocol.smtp_helpers import ADDRESSES
from tests.protocol.submission_helpers import SubmissionThread, message, starttls_client

USER, OTHER = ADDRESSES["user"], ADDRESSES["other"]


def _events(factory: sessionmaker[Session], address: str, count: int) -> list[tuple[str, ...]]:
    deadline = time.monotonic() + 20
    while True:
        with factory() as s:
            found = tracking.search(s, query=tracking.normalise_query(address=address))
            rows = [(e.kind, e.service, e.recipient or "", e.mailbox or "", e.reply or "",
                     e.stage or "") for e in found]  # fmt: skip
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def test_submission_events(
    smtp_world: None,
    submission_start: Callable[..., SubmissionThread],
    session_factory: sessionmaker[Session],
    tls_files: tuple[Path, Path],
) -> None:
    server = submission_start()
    client = starttls_client(server.port, tls_files[0], login=USER)
    try:
        code, reply = client.mail(OTHER)  # not the user's own address
        assert code == 553, reply
        client.rset()
        assert client.sendmail(USER, [OTHER, "bob@remote.example"], message(USER, OTHER)) == {}
    finally:
        client.quit()
    rows = _events(session_factory, USER, 4)
    kinds = [(kind, rcpt, mailbox) for kind, _, rcpt, mailbox, _, _ in rows]
    assert kinds == [
        ("refused", "", USER),  # by the mailbox logged in, tried as sender OTHER
        ("submitted", "", USER),
        ("stored", OTHER, OTHER),
        ("queued", "bob@remote.example", ""),
    ]
    assert all(r[1] == "submission" for r in rows)
    assert rows[0][5] == "MAIL" and rows[0][4].startswith("553 5.7.1")
    assert all(r[4].startswith("250") for r in rows[1:])
