"""Bounces to our SRS addresses at the MX: decoded and sent on to the original sender.

Real parts: a remote forward leaves the delivery agent with an SRS sender for the aiosmtpd
sink on 127.0.0.3 (found through the real DNS server); the "remote" side's DSN then comes
back to the MX (aiosmtpd on port 0) from smtplib with the null sender, is queued, and the
agent delivers it to the original sender's MX (the same sink). Forged, expired and
non-bounce uses are refused at RCPT and nothing is queued.
"""

from __future__ import annotations

import datetime as dt
import smtplib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MaildirStore
from app.models import OutboundMessage
from app.services import selfservice
from app.services.audit import CLI_ACTOR
from app.srs import SrsRewriter
from tests.dnsserver import TestDNSServer
from tests.factories import make_domain, make_mailbox
from tests.protocol.outbound_helpers import (
    Clock,
    Sink,
    free_port,
    make_agent,
    outbound_settings,
    run_once,
)
from tests.protocol.smtp_helpers import IngressThread

DSN = (
    "From: MAILER-DAEMON@mx.remote.example\r\n"
    "To: {rcpt}\r\n"
    "Subject: Undelivered Mail Returned to Sender\r\n"
    "Auto-Submitted: auto-replied\r\n"
    "Content-Type: text/plain\r\n\r\n"
    "bob@remote.example: user unknown.\r\n"
)


@pytest.fixture
def port() -> int:
    return free_port("127.0.0.3")


@pytest.fixture
def sink(port: int) -> Iterator[Sink]:
    running = Sink("127.0.0.3", port).start()
    yield running
    running.stop()


@pytest.fixture
def out(settings: Settings, tmp_path: Path, dns_server: TestDNSServer, port: int) -> Settings:
    for domain in ("remote.example", "origin.example"):
        dns_server.zone.mx(domain, (10, f"mx.{domain}"))
        dns_server.zone.a(f"mx.{domain}", "127.0.0.3")
    return outbound_settings(settings, tmp_path, dns_server.port, port).model_copy(
        update={"srs_secret": SecretStr("a test secret for SRS, long enough")}
    )


@pytest.fixture
def mx(
    out: Settings, session_factory: sessionmaker[Session], smtp_start: Callable[..., IngressThread]
) -> IngressThread:
    with transaction(session_factory) as s:
        box = make_mailbox(s, "keeper@hosted.example")
        make_mailbox(s, "other@hosted.example")
        selfservice.set_forward(
            s, actor=CLI_ACTOR, mailbox_id=box.id, address="bob@remote.example", keep_copy=True
        )
        # A catch-all domain: the SRS decision comes before it could take the bounce.
        catchall = make_domain(s, "catchall.example")
        make_mailbox(s, "all@catchall.example")
        catchall.catchall_target = "all@catchall.example"
    return smtp_start(out)


def _agent_run(out: Settings, factory: sessionmaker[Session], store: MaildirStore) -> int:
    clock = Clock(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5))
    return run_once(make_agent(out, factory, store, clock))


def _queued(factory: sessionmaker[Session]) -> list[tuple[str, list[str]]]:
    with factory() as s:
        rows = s.scalars(select(OutboundMessage).order_by(OutboundMessage.id)).all()
        return [(r.sender, [x.address for x in r.recipients]) for r in rows]


def _rcpt(mx: IngressThread, sender: str, rcpt: str) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as client:
        client.ehlo("mx.remote.example")
        client.mail(sender)
        return client.rcpt(rcpt)


def test_a_bounce_to_the_srs_sender_goes_back_to_the_original_sender(
    mx: IngressThread,
    out: Settings,
    sink: Sink,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
) -> None:
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as client:
        client.sendmail(
            "sender@origin.example",
            ["keeper@hosted.example"],
            "From: sender@origin.example\r\nSubject: hi\r\n\r\nHello.\r\n",
        )
    assert _agent_run(out, session_factory, store) == 1
    [forwarded] = sink.received
    srs_sender = forwarded.sender
    assert srs_sender.startswith("SRS0=") and srs_sender.endswith("@hosted.example")
    # The remote side bounces it: a DSN from <> to the SRS address.
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as client:
        client.ehlo("mx.remote.example")
        client.mail("<>")
        code, text = client.rcpt(srs_sender)
        assert code == 250, text
        code, text = client.data(DSN.format(rcpt=srs_sender).encode())
        assert code == 250, text
    # Queued (committed before the 250) from <> to the original sender.
    assert _queued(session_factory)[-1] == ("", ["sender@origin.example"])
    assert _agent_run(out, session_factory, store) == 1
    bounce = sink.received[-1]
    assert bounce.sender == "<>" and bounce.recipients == ["sender@origin.example"]
    assert b"user unknown" in bounce.data and b"Received: from mx.remote.example" in bounce.data
    # Nothing went into a mailbox (the keeper has its one kept copy only).
    assert len(list(store.list_messages(_ref("keeper@hosted.example")))) == 1


def _ref(address: str):  # noqa: ANN202
    from app.maildir import MailboxRef

    local, domain = address.split("@")
    return MailboxRef(domain, local)


def test_forged_expired_and_non_bounce_uses_are_refused_and_nothing_is_stored(
    mx: IngressThread, out: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    srs = SrsRewriter.from_settings(out)
    good = srs.forward("sender@origin.example", domain="hosted.example")
    assert good is not None
    hash_ = good.split("=")[1]
    forged = good.replace(f"={hash_}=", "=" + ("AAAA" if hash_ != "AAAA" else "BBBB") + "=")
    old = SrsRewriter.from_settings(out)
    old._srs._time_fn = lambda: time.time() - 30 * 86400  # srslib's hook for this test
    expired = old.forward("sender@origin.example", domain="hosted.example")
    assert expired is not None and srs.reverse(expired) is None
    other_key = SrsRewriter(b"somebody else's key").forward(
        "victim@origin.example", domain="hosted.example"
    )
    assert other_key is not None
    cases = [
        # (sender, recipient, expected code, fragment of the reply)
        ("<>", forged, 550, b"5.1.1"),
        ("<>", expired, 550, b"5.1.1"),
        ("<>", other_key, 550, b"5.1.1"),
        ("<>", "SRS0=nonsense@hosted.example", 550, b"5.1.1"),
        ("spammer@spam.example", good, 550, b"5.7.1"),
        ("<>", good.replace("@hosted.example", "@catchall.example"), 250, b"2.1.5"),
        ("<>", good.replace("@hosted.example", "@foreign.example"), 554, b"5.7.1"),
    ]
    for sender, rcpt, want, fragment in cases:
        code, text = _rcpt(mx, sender, rcpt)
        assert (code, fragment in text) == (want, True), (sender, rcpt, code, text)
    assert _queued(session_factory) == []  # a RCPT alone stores nothing
    assert list(store.list_messages(_ref("all@catchall.example"))) == []


def test_bounce_recipients_are_not_mixed_with_others(
    mx: IngressThread, out: Settings, session_factory: sessionmaker[Session]
) -> None:
    good = SrsRewriter.from_settings(out).forward("sender@origin.example", domain="hosted.example")
    assert good is not None
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as client:
        client.ehlo("mx.remote.example")
        assert client.mail("<>")[0] == 250
        assert client.rcpt("other@hosted.example")[0] == 250
        code, text = client.rcpt(good)
        assert code == 452 and b"4.5.3" in text
    with smtplib.SMTP("127.0.0.1", mx.port, timeout=10) as client:
        client.ehlo("mx.remote.example")
        assert client.mail("<>")[0] == 250
        assert client.rcpt(good)[0] == 250
        code, text = client.rcpt("other@hosted.example")
        assert code == 452 and b"4.5.3" in text
        assert client.data(DSN.format(rcpt=good).encode())[0] == 250
    assert _queued(session_factory) == [("", ["sender@origin.example"])]
