"""Quota warnings through the real MX: crossing 80, 90 and 100 % gives one warning each, more
deliveries at a level give none, and usage falling back re-arms the warning."""

from __future__ import annotations

import email
import email.policy
import smtplib
from collections import Counter
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from app.maildir import MaildirStore
from tests.factories import seed_mailbox
from tests.protocol.smtp_helpers import IngressThread, new_messages, ref

ADDRESS = "full.soon@hosted.example"
QUOTA = 100_000


def _body(octets: int) -> str:
    line = "x" * 75 + "\n"
    return "Subject: filler\n\n" + line * max(1, octets // len(line))


def _warnings(store: MaildirStore) -> Counter[str]:
    found: Counter[str] = Counter()
    for raw in new_messages(store, ADDRESS):
        message = email.message_from_bytes(raw, policy=email.policy.default)
        level = message.get("X-Mailhost-Quota-Warning")
        if level is not None:
            assert message["Auto-Submitted"] == "auto-generated"  # RFC 3834
            assert message["Return-Path"] == "<>"
            assert message["To"] == ADDRESS
            assert f"{level}% full" in message["Subject"]
            found[str(level)] += 1
    return found


def _percent(store: MaildirStore) -> float:
    return store.usage(ref(ADDRESS)).bytes * 100 / QUOTA


def test_each_threshold_warns_once_and_rearms_after_falling_back(
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    smtp_start: Callable[..., IngressThread],
) -> None:
    seed_mailbox(session_factory, ADDRESS, quota=QUOTA)
    server = smtp_start(smtp_resolution_cache_seconds=0)

    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:

        def send(octets: int) -> None:
            client.sendmail("a@remote.example", [ADDRESS], _body(octets))

        send(50_000)
        assert _warnings(store) == {}  # 50 %: nothing
        send(33_000)
        assert 80 <= _percent(store) < 90
        assert _warnings(store) == {"80": 1}
        for _ in range(5):  # more mail at the same level: no storm
            send(300)
        assert _percent(store) < 90
        assert _warnings(store) == {"80": 1}
        send(6_000)
        assert 90 <= _percent(store) < 100
        assert _warnings(store) == {"80": 1, "90": 1}
        send(300)
        send(8_000)
        assert _percent(store) >= 100
        assert _warnings(store) == {"80": 1, "90": 1, "100": 1}
        # Full: the MX refuses further mail at RCPT (452 4.2.2), and nothing warns again.
        assert client.mail("a@remote.example")[0] == 250
        assert client.rcpt(ADDRESS)[0] == 452
        client.rset()
        assert _warnings(store) == {"80": 1, "90": 1, "100": 1}

        # The user deletes everything; the next delivery notices and re-arms.
        store.expunge(ref(ADDRESS), store.list_messages(ref(ADDRESS)))
        send(300)
        assert _warnings(store) == {}
        send(85_000)
        assert _warnings(store) == {"80": 1}
