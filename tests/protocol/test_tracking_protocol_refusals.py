"""Refusals the SMTP protocol layer makes itself (syntax errors, 552 too big, 554 bare LF,
554 too many Received, 421 connection and junk limits): raw sockets send the bad input, then
the tracking search (service and API) shows each refusal with its reply and stage, under the
transaction's queue id or the session's, and the metrics count them by reply class."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.maildir import MaildirStore
from tests.protocol.smtp_helpers import ADDRESSES, IngressThread, RawClient, new_messages
from tests.protocol.tracking_helpers import events as _events
from tests.protocol.tracking_helpers import refusal_counts
from tests.protocol.tracking_helpers import refused as _refused
from tests.web.api_helpers import bearer, build_app, make_token

USER = ADDRESSES["user"]


def test_protocol_refusals_are_tracked_with_reply_and_stage_and_counted_by_class(
    smtp_world: None,
    smtp_start: Callable[..., IngressThread],
    settings: Settings,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
) -> None:
    name = "mailhost_protocol_refusals_total"
    before = refusal_counts(name)
    server = smtp_start(
        smtp_max_message_size=2000, smtp_max_connections_per_ip=2, smtp_max_junk_commands=12
    )

    # Syntax errors before and after EHLO, an unknown verb, an empty line.
    bad = RawClient(server.port)
    assert bad.cmd("MAIL FROM:<a@remote.example>").startswith("503 ")  # HELO first
    assert bad.cmd("EHLO client.remote.example").startswith("250")
    assert bad.cmd("MAIL FRM:<a@remote.example>").startswith("501 ")
    assert bad.cmd("MAIL FROM:no-brackets").startswith("553 ")
    assert bad.cmd("XYZZY").startswith("500 ")
    assert bad.cmd(b"\r\n").startswith("500 ")
    # Too big (552) and a bare LF (554) in one session: each under its transaction's id.
    assert bad.cmd("MAIL FROM:<big@remote.example>").startswith("250")
    assert bad.cmd(f"RCPT TO:<{USER}>").startswith("250")
    assert bad.cmd("DATA").startswith("354")
    assert bad.cmd(b"Subject: big\r\n\r\n" + b"x" * 3000 + b"\r\n.\r\n").startswith("552 ")
    assert bad.cmd("MAIL FROM:<lf@remote.example>").startswith("250")
    assert bad.cmd(f"RCPT TO:<{USER}>").startswith("250")
    assert bad.cmd("DATA").startswith("354")
    assert bad.cmd(b"Subject: lf\r\n\r\nbare\nline\r\n.\r\n").startswith("554 ")
    # A mail loop: more than 30 Received fields (RFC 5321 section 6.3), refused at DATA.
    assert bad.cmd("MAIL FROM:<loop@remote.example>").startswith("250")
    assert bad.cmd(f"RCPT TO:<{USER}>").startswith("250")
    assert bad.cmd("DATA").startswith("354")
    hops = b"".join(b"Received: from hop%d.example by x; now\r\n" % i for i in range(31))
    assert bad.cmd(hops + b"Subject: loop\r\n\r\nhi\r\n.\r\n").startswith("554 5.4.6")
    # The connection limit: a third connection from this address gets 421 at once.
    second = RawClient(server.port)
    third = RawClient(server.port)
    assert third.greeting.startswith("421 4.7.0")
    # The junk limit: the 13th error is answered, then the session closed with 421.
    replies = [second.cmd("XYZZY") for _ in range(13)]
    assert all(r.startswith("500 ") for r in replies), replies
    assert second.reply().startswith("421 4.7.0 Too many errors")
    for client in (bad, second, third):
        client.close()
    server.stop()  # writes the buffered events
    assert new_messages(store, USER) == []

    events = _events(session_factory, client_ip="127.0.0.1")
    refused = _refused(events)
    assert ("MAIL", "503") in refused and ("MAIL", "501") in refused
    assert refused.count(("MAIL", "553")) == 1  # the handler's own, not recorded twice
    assert ("UNKNOWN", "500") in refused and ("COMMAND", "500") in refused
    assert ("DATA", "552") in refused and ("DATA", "554") in refused
    assert refused.count(("DATA", "554")) == 2  # the bare LF and the loop
    assert ("CONNECT", "421") in refused
    assert refused.count(("UNKNOWN", "500")) == 1 + 13 and ("UNKNOWN", "421") in refused

    by_reply = {(e.reply or "")[:3] + (e.stage or ""): e for e in events if e.kind == "refused"}
    big = by_reply["552DATA"]
    assert big.sender == "big@remote.example" and big.helo == "client.remote.example"
    assert big.queue_id and not big.queue_id.startswith("S")  # the transaction's queue id
    assert (big.detail or "").startswith("protocol; session S")
    early = by_reply["503MAIL"]  # no transaction yet: the session's id
    assert early.queue_id is not None and early.queue_id.startswith("S")
    assert early.queue_id == (by_reply["500COMMAND"].queue_id)  # the same session
    assert by_reply["421CONNECT"].queue_id != early.queue_id  # another connection
    loop = next(e for e in events if e.kind == "refused" and "loop" in (e.reply or ""))
    assert loop.sender == "loop@remote.example" and loop.stage == "DATA"

    # A search by the session id (a queue id search) shows that session's refusals.
    session_events = _events(session_factory, queue_id=early.queue_id.lower())
    assert {e.queue_id for e in session_events} == {early.queue_id}
    assert ("MAIL", "503") in _refused(session_events)

    # ... and so does the API (read scope).
    app = build_app(settings, session_factory, store)
    token = make_token(session_factory, "read")
    with TestClient(app) as client:
        r = client.get("/api/v1/messages", params={"queue_id": big.queue_id}, headers=bearer(token))
        assert r.status_code == 200, r.text
        items = r.json()["items"]
    assert [(i["kind"], i["stage"], i["reply"][:3]) for i in items if i["kind"] == "refused"] == [
        ("refused", "DATA", "552")
    ]

    after = refusal_counts(name)

    def grew(stage: str, cls: str) -> float:
        key = ("smtp", stage, cls)
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert grew("mail", "5xx") == 2  # 503 and 501; the 553 is the handler's (tracked there)
    assert grew("unknown", "5xx") == 14
    assert grew("command", "5xx") == 1
    assert grew("data", "5xx") == 2  # 552 and the bare LF (the loop is the handler's)
    assert grew("connect", "4xx") == 1
    assert grew("unknown", "4xx") == 1  # the junk limit's 421
