"""Message tracking end to end: real SMTP ingress and POP3 servers, real smtplib and poplib
clients; the events then show up in the API (read scope, cursor paging), in `mailhost trace`
and on the portal page a support operator may open."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.maildir import MaildirStore
from mailhost.cli import main
from tests import tracking_scenario as scenario
from tests.protocol.pop3_helpers import running_server
from tests.protocol.smtp_helpers import IngressThread
from tests.web.api_helpers import bearer, build_app, make_token
from tests.web.portal_helpers import PortalClient, add_operator


@pytest.fixture
def outcome(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> Iterator[scenario.Outcome]:
    scenario.seed(session_factory)
    ingress = IngressThread(settings, session_factory, store, greet_delay=0).start()
    try:
        with running_server(settings, session_factory=session_factory, store=store) as pop3:
            yield scenario.run(session_factory, smtp_port=ingress.port, pop3_port=pop3.port)
    finally:
        ingress.stop()


def _kinds(items: list[dict[str, Any]]) -> list[tuple[str, str | None, str | None]]:
    return [(e["kind"], e["recipient"], e["mailbox"]) for e in items]


STORY = [
    ("received", scenario.INFO, None),
    ("received", scenario.CAROL, None),
    ("stored", scenario.INFO, scenario.ALICE),
    ("stored", scenario.CAROL, scenario.CAROL),
    ("retrieved", None, scenario.ALICE),
    ("deleted", None, scenario.ALICE),
]


def test_api_cli_and_portal_show_each_message(
    outcome: scenario.Outcome,
    settings: Settings,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = build_app(settings, session_factory, store)
    read = make_token(session_factory, "read")
    billing = make_token(session_factory, "billing:read")
    add_operator(session_factory, "sam", "support")
    with TestClient(app) as client:
        # --- API: the refused RCPT with the reply the client saw, and where.
        r = client.get(
            "/api/v1/messages", params={"address": scenario.NOBODY.upper()}, headers=bearer(read)
        )
        assert r.status_code == 200, r.text
        (refused,) = r.json()["items"]
        assert refused["kind"] == "refused" and refused["stage"] == "RCPT"
        assert refused["reply"].startswith("550 5.1.1")
        assert refused["client_ip"] == "127.0.0.1"
        assert refused["helo"] == "client.remote.example"
        assert refused["sender"] == scenario.SENDER.lower()

        # The message for two mailboxes, found through the alias, the mailbox or the queue id,
        # with POP3's retrieval and deletion (by whom, from where) under the same queue id.
        for criteria in ({"address": scenario.INFO}, {"address": "ALICE@track.example"},
                         {"queue_id": outcome.queue_id.lower()}):  # fmt: skip
            r = client.get("/api/v1/messages", params=criteria, headers=bearer(read))
            assert r.status_code == 200, r.text
            items = r.json()["items"]
            assert _kinds(items) == STORY, criteria
            assert {e["queue_id"] for e in items} == {outcome.queue_id}
        stored = items[2]
        assert stored["reply"] == f"250 2.0.0 Ok: delivered as {outcome.queue_id}"
        assert items[0]["detail"] == f"resolved to {scenario.ALICE}"
        assert items[4]["client_ip"] == "127.0.0.1" and items[4]["stage"] == "RETR"

        # Cursor paging: two events a page, in time order, nothing twice.
        seen: list[int] = []
        params: dict[str, Any] = {"address": scenario.SENDER, "limit": 2}
        while True:
            page = client.get("/api/v1/messages", params=params, headers=bearer(read)).json()
            seen.extend(e["id"] for e in page["items"])
            if page["next_cursor"] is None:
                break
            params["cursor"] = page["next_cursor"]
        assert len(seen) == scenario.EXPECTED_EVENTS == len(set(seen))

        # Scope and bad input.
        assert client.get("/api/v1/messages", headers=bearer(billing)).status_code == 403
        assert client.get("/api/v1/messages").status_code == 401
        r = client.get("/api/v1/messages", params={"client_ip": "300.1.1.1"}, headers=bearer(read))
        assert r.status_code == 422 and "client_ip" in r.text
        r = client.get("/api/v1/messages", params={"cursor": "bogus"}, headers=bearer(read))
        assert r.status_code == 422 and "cursor" in r.text

        # --- Portal, as a support operator, one click from the mailbox's page.
        portal = PortalClient(client)
        assert portal.login("sam").status_code == 303
        mailbox_page = portal.get("/mailboxes").text
        mailbox_url = re.search(r'href="(/mailboxes/\d+)"', mailbox_page)
        assert mailbox_url is not None
        detail = portal.get(mailbox_url.group(1)).text
        link = re.search(r'id="tracking-link" href="([^"]+)"', detail)
        assert link is not None
        html = portal.get(link.group(1).replace("&amp;", "&")).text
        rows = re.findall(r'<td class="kind">(\w+)</td>', html)
        assert rows == ["received", "received", "stored", "stored", "retrieved", "deleted"]
        assert f"delivered as {outcome.queue_id}" in html
        html = portal.get("/tracking", params={"address": scenario.NOBODY}).text
        assert re.findall(r'<td class="kind">(\w+)</td>', html) == ["refused"]
        assert "550 5.1.1" in html
        bad = portal.get("/tracking", params={"client_ip": "not an ip"})
        assert bad.status_code == 400 and "is not an IP address" in bad.text

    # --- CLI.
    monkeypatch.chdir(tmp_path)
    out, err = io.StringIO(), io.StringIO()
    argv = ["--database-url", settings.database_url, "trace", scenario.CAROL, "--json"]
    assert main(argv, stdout=out, stderr=err) == 0, err.getvalue()
    events = json.loads(out.getvalue())
    assert [(e["kind"], e["recipient"]) for e in events] == [
        ("received", scenario.INFO), ("received", scenario.CAROL),
        ("stored", scenario.INFO), ("stored", scenario.CAROL),
        ("retrieved", None), ("deleted", None),
    ]  # fmt: skip
    out = io.StringIO()
    assert main(["--database-url", settings.database_url, "trace", scenario.NOBODY],
                stdout=out, stderr=err) == 0  # fmt: skip
    assert "refused" in out.getvalue() and "550 5.1.1" in out.getvalue()
    err = io.StringIO()
    assert main(["--database-url", settings.database_url, "trace"], stdout=out, stderr=err) == 2
    assert "give an ADDRESS" in err.getvalue()
