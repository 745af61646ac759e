"""What a POP3 session leaves in message tracking: a RETR that could not send its message is
no retrieval, and the events of a session are all stored once it has ended (they are handed
to the writer after their replies are written)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MaildirStore
from app.maildir_files import uid_from_name
from app.models import MessageEvent
from tests.factories import DEFAULT_PASSWORD, seed_mailbox
from tests.protocol.pop3_helpers import RawClient, deliver, running_server

ALICE = "alice@a.example"


def _pop3_events(factory: sessionmaker[Session]) -> list[tuple[str, str | None, str | None]]:
    with transaction(factory) as db:
        rows = db.scalars(
            select(MessageEvent).where(MessageEvent.service == "pop3").order_by(MessageEvent.id)
        ).all()
        return [(e.kind, e.message_key, e.mailbox) for e in rows]


def test_a_vanished_message_is_not_tracked_as_retrieved(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    seed_mailbox(session_factory, ALICE)
    gone, kept = deliver(store, ALICE, b"Subject: one\n\nfirst\n", b"Subject: two\n\nsecond\n")
    with running_server(settings, session_factory=session_factory, store=store) as server:
        client = RawClient(server.port)
        assert client.login(ALICE, DEFAULT_PASSWORD).startswith(b"+OK")
        gone.path.unlink()  # another tool removed it after the login's snapshot
        assert client.cmd("RETR 1") == b"-ERR Message is no longer available"
        assert client.cmd("RETR 2").startswith(b"+OK")
        assert client.multiline_raw().endswith(b"second\r\n.\r\n")
        assert client.cmd("DELE 2").startswith(b"+OK")
        assert client.cmd("QUIT").startswith(b"+OK")
        assert client.at_eof()
    # The server has stopped: its tracking writer wrote everything it was handed.
    uid = uid_from_name(kept.path.name)
    assert _pop3_events(session_factory) == [("retrieved", uid, ALICE), ("deleted", uid, ALICE)]
