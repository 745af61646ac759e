"""Refusals submission's protocol layer makes itself (issue 14): syntax errors, 530 TLS or AUTH
first, 538 AUTH before TLS, 535 a wrong password, 552 too big, aiosmtpd's 502 after too many
unknown commands, the 421 of the connection limit. Real clients send the bad input; the
tracking search (service and API) then shows each refusal with its reply and stage, under
the transaction's queue id or the session's, and the metrics count them by reply class."""

from __future__ import annotations

import base64
import smtplib
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.maildir import MaildirStore
from tests.protocol.smtp_helpers import ADDRESSES
from tests.protocol.submission_helpers import (
    PASSWORD,
    TIMEOUT,
    SubmissionThread,
    client_tls,
)
from tests.protocol.tracking_helpers import events as _events
from tests.protocol.tracking_helpers import refusal_counts
from tests.protocol.tracking_helpers import refused as _refused
from tests.web.api_helpers import bearer, build_app, make_token

USER, OTHER = ADDRESSES["user"], ADDRESSES["other"]


def _plain(password: str) -> str:
    return "PLAIN " + base64.b64encode(f"\0{USER}\0{password}".encode()).decode()


def _raw_greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        return sock.recv(200)


def test_submission_protocol_refusals_are_tracked_and_counted(
    smtp_world: None,
    submission_start: Callable[..., SubmissionThread],
    settings: Settings,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    tls_files: tuple[Path, Path],
) -> None:
    before = refusal_counts()
    server = submission_start(smtp_max_message_size=2000, submission_max_connections_per_ip=2)

    client = smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT)
    # Before TLS: a transaction (530 STARTTLS first), AUTH (538), an unknown verb, an empty
    # line (the verb never read: COMMAND), HELP before AUTH (530).
    assert client.docmd("MAIL", "FROM:<a@remote.example>")[0] == 530
    assert client.ehlo("client.test")[0] == 250
    assert client.docmd("AUTH", _plain(PASSWORD))[0] == 538
    assert client.docmd("XYZZY")[0] == 500
    assert client.docmd("")[0] == 500
    assert client.docmd("HELP", "MAIL")[0] == 530
    client.starttls(context=client_tls(tls_files[0]))
    assert client.ehlo("client.test")[0] == 250
    assert client.docmd("MAIL", "FROM:<a@remote.example>")[0] == 530  # AUTH first
    assert client.docmd("AUTH", _plain("wrong password"))[0] == 535
    client.login(USER, PASSWORD)
    assert client.docmd("MAIL", "FRM:<x>")[0] == 501
    assert client.docmd("MAIL", f"FROM:<{OTHER}>")[0] == 553  # the handler's own refusal
    # Too big: 552 at DATA, under the transaction's queue id.
    assert client.docmd("MAIL", f"FROM:<{USER}>")[0] == 250
    assert client.docmd("RCPT", f"TO:<{OTHER}>")[0] == 250
    assert client.docmd("DATA")[0] == 354
    client.send(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 40 + b".\r\n")
    assert client.getreply()[0] == 552
    # Two connections from this address are open now: a third one gets 421 at once.
    junk = smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT)
    assert _raw_greeting(server.port).startswith(b"421 4.7.0")
    # aiosmtpd's limit of unknown commands: four 500s, then 502 and the connection closed.
    answers = [junk.docmd("XYZZY")[0] for _ in range(5)]
    assert answers == [500, 500, 500, 500, 502], answers
    client.quit()
    junk.close()
    server.stop()  # writes the buffered events

    events = [e for e in _events(session_factory, client_ip="127.0.0.1")]
    assert {e.service for e in events} == {"submission"}
    refused = _refused(events)
    assert refused.count(("MAIL", "530")) == 2
    assert ("AUTH", "538") in refused and ("AUTH", "535") in refused
    assert ("UNKNOWN", "500") in refused and ("COMMAND", "500") in refused
    assert ("HELP", "530") in refused
    assert ("MAIL", "501") in refused
    assert refused.count(("MAIL", "553")) == 1  # recorded by the handler, not twice
    assert ("DATA", "552") in refused
    assert ("CONNECT", "421") in refused
    assert refused.count(("UNKNOWN", "500")) == 1 + 4 and ("UNKNOWN", "502") in refused

    by = {(e.stage, (e.reply or "")[:3]): e for e in events if e.kind == "refused"}
    big = by[("DATA", "552")]
    assert big.queue_id and not big.queue_id.startswith("S")  # the transaction's id
    assert big.sender == USER and big.mailbox == USER and big.helo == "client.test"
    assert (big.reply or "").startswith("552 5.3.4")
    assert (big.detail or "").startswith("protocol; session S")
    first = by[("MAIL", "530")]  # before any transaction: the session's id
    assert first.queue_id is not None and first.queue_id.startswith("S")
    assert by[("AUTH", "535")].queue_id == first.queue_id  # the same session
    assert by[("UNKNOWN", "502")].queue_id != first.queue_id  # another connection
    assert by[("CONNECT", "421")].queue_id not in (first.queue_id, by[("UNKNOWN", "502")].queue_id)
    # The wrong password is findable by the address tried (the password is nowhere).
    assert by[("AUTH", "535")].mailbox == USER and by[("AUTH", "538")].mailbox is None
    tried = _refused(_events(session_factory, address=USER))
    assert ("AUTH", "535") in tried
    assert all("wrong password" not in repr(vars(e)) for e in events)

    # A queue-id search for the session id shows that session's refusals; so does the API.
    session_events = _events(session_factory, queue_id=first.queue_id.lower())
    assert {e.queue_id for e in session_events} == {first.queue_id}
    app = build_app(settings, session_factory, store)
    token = make_token(session_factory, "read")
    with TestClient(app) as api:
        r = api.get("/api/v1/messages", params={"queue_id": big.queue_id}, headers=bearer(token))
        assert r.status_code == 200, r.text
        items = r.json()["items"]
    assert [(i["kind"], i["stage"], i["reply"][:3]) for i in items if i["kind"] == "refused"] == [
        ("refused", "DATA", "552")
    ]

    after = refusal_counts()

    def grew(stage: str, cls: str) -> float:
        key = ("submission", stage, cls)
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("mail", "5xx") == 3  # two 530s and the 501; the 553 is the handler's
    assert grew("auth", "5xx") == 2
    assert grew("unknown", "5xx") == 1 + 4 + 1
    assert grew("command", "5xx") == 1
    assert grew("help", "5xx") == 1
    assert grew("data", "5xx") == 1
    assert grew("connect", "4xx") == 1


def test_an_idle_session_is_told_421_before_it_is_closed_and_that_is_tracked(
    smtp_world: None,
    submission_start: Callable[..., SubmissionThread],
    session_factory: sessionmaker[Session],
    tls_files: tuple[Path, Path],
) -> None:
    server = submission_start(smtp_idle_timeout=0.5)
    client = smtplib.SMTP("127.0.0.1", server.port, timeout=TIMEOUT)
    client.starttls(context=client_tls(tls_files[0]))  # also through TLS
    assert client.ehlo("client.test")[0] == 250
    code, text = client.getreply()  # nothing sent: the server speaks first, then closes
    assert (code, text[:5]) == (421, b"4.4.2"), text
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()
    server.stop()
    [event] = [e for e in _events(session_factory, client_ip="127.0.0.1") if e.kind == "refused"]
    assert (event.stage, event.reply, event.service) == (
        "EHLO",
        "421 4.4.2 Idle timeout, closing connection",
        "submission",
    )
    assert event.queue_id is not None and event.queue_id.startswith("S")
