"""The portal's Queue page over real queue rows (spool file + enqueue): filters, paging, the
last remote reply per recipient, admin-only actions with CSRF, audit rows, spool cleanup."""

# ruff: noqa: F811  (pytest fixtures imported from portal_helpers are redefined as arguments)
from __future__ import annotations

import html
import re

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.models import OutboundRecipient
from tests.web.portal_helpers import (  # noqa: F401
    PortalClient,
    admin,
    anon,
    portal_app,
    support,
)
from tests.web.queue_helpers import (  # noqa: F401
    audit_actions,
    defer_all,
    message_exists,
    queue_message,
    settings,
    spool_of,
)
from web.portal.common import PAGE_SIZE

_QID = re.compile(r'<a href="/queue/([0-9A-F]{16})">')


def listed(page: str) -> list[str]:
    """The queue ids the list page shows, in order."""
    return _QID.findall(page)


def states_of(factory: sessionmaker[Session], queue_id: str) -> list[str]:
    with factory() as s:
        return list(
            s.scalars(
                select(OutboundRecipient.state)
                .join(OutboundRecipient.message)
                .where(OutboundRecipient.message.has(queue_id=queue_id))
                .order_by(OutboundRecipient.id)
            )
        )


def test_nav_links_to_the_queue(admin: PortalClient) -> None:
    page = admin.get("/").text
    assert '<a href="/queue"' in page


def test_list_filters_by_domain_sender_state_and_age(
    admin: PortalClient, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    old, _ = queue_message(
        settings, session_factory, ["bob@slow.example"], sender="alice@hosted.example", age=7200
    )
    new, _ = queue_message(
        settings, session_factory, ["carol@fast.example"], sender="dave@other.example"
    )
    bounce, _ = queue_message(settings, session_factory, ["eve@slow.example"], sender="")

    assert listed(admin.get("/queue").text) == [old, new, bounce]
    assert listed(admin.get("/queue?domain=slow.example").text) == [old, bounce]
    assert listed(admin.get("/queue?domain=SLOW.example").text) == [old, bounce]
    assert listed(admin.get("/queue?domain=low.example").text) == []  # whole domain only
    assert listed(admin.get("/queue?sender=DAVE@").text) == [new]
    assert listed(admin.get("/queue?sender=%3C%3E").text) == [bounce]
    assert listed(admin.get("/queue?age=1h").text) == [old]
    assert listed(admin.get("/queue?state=held").text) == []
    assert "No messages match these filters" in admin.get("/queue?state=held").text

    admin.post(f"/queue/{new}/hold")
    assert listed(admin.get("/queue?state=held").text) == [new]
    # A domain and a state must hold for the same recipient.
    assert listed(admin.get("/queue?state=held&domain=slow.example").text) == []

    refused = admin.get("/queue?state=lost")
    assert refused.status_code == 400
    assert "unknown state" in refused.text
    assert admin.get("/queue?domain=not%20a%20domain").status_code == 400


def test_list_pages_with_the_filters_kept(
    admin: PortalClient, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    ids = [
        queue_message(settings, session_factory, [f"r{i}@paged.example"])[0]
        for i in range(PAGE_SIZE + 3)
    ]
    queue_message(settings, session_factory, ["x@elsewhere.example"])
    first = admin.get("/queue?domain=paged.example")
    assert listed(first.text) == ids[:PAGE_SIZE]
    link = re.search(r'<a class="btn" href="([^"]+)">Next page', first.text)
    assert link, "no next-page link"
    second = admin.get(html.unescape(link.group(1)))
    assert listed(second.text) == ids[PAGE_SIZE:]
    assert "Next page" not in second.text


def test_detail_shows_each_recipient_with_its_last_remote_reply(
    admin: PortalClient, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    qid, _ = queue_message(settings, session_factory, ["bob@remote.example", "c@remote.example"])
    assert defer_all(session_factory, code=451, text="4.7.1 greylisted, come back later") == 2
    page = admin.get(f"/queue/{qid.lower()}")  # the id in any case
    assert page.status_code == 200
    table = page.text[page.text.index('id="recipients"') :]
    assert "bob@remote.example" in table and "c@remote.example" in table
    assert table.count("451 4.7.1 greylisted, come back later") == 2
    assert "mx1.remote.example" in table
    assert table.count('badge-deferred">deferred') == 2
    for label in ("Retry now", "Hold", "Delete…"):
        assert label in page.text
    assert admin.get("/queue/00000000DEADBEEF").status_code == 404


def test_admin_actions_change_state_and_are_audited(
    admin: PortalClient, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    qid, _ = queue_message(settings, session_factory, ["bob@remote.example"])
    defer_all(session_factory)

    held = admin.post(f"/queue/{qid}/hold")
    assert held.status_code == 303 and held.headers["location"] == f"/queue/{qid}?done=queue_hold"
    assert states_of(session_factory, qid) == ["held"]
    # Nothing queued or deferred is left to retry: said on the page, with 409.
    refused = admin.post(f"/queue/{qid}/retry")
    assert refused.status_code == 409
    assert "no queued or deferred recipient to retry" in refused.text
    assert admin.post(f"/queue/{qid}/release").status_code == 303
    assert states_of(session_factory, qid) == ["deferred"]  # it had been tried before
    assert admin.post(f"/queue/{qid}/retry").status_code == 303
    assert admin.post(f"/queue/{qid}/explode").status_code == 404

    assert audit_actions(session_factory, qid) == [
        ("queue.hold", "alice"),
        ("queue.release", "alice"),
        ("queue.retry", "alice"),
    ]
    assert "queue.hold" in admin.get(f"/audit?object_type=queue&object={qid}").text


def test_delete_removes_rows_and_spool_file_after_confirmation(
    admin: PortalClient, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    qid, spool_id = queue_message(settings, session_factory, ["bob@remote.example"])
    confirm = admin.get(f"/queue/{qid}/delete")
    assert "no bounce" in confirm.text
    assert spool_of(settings).exists(spool_id)  # the confirmation page changes nothing
    gone = admin.post(f"/queue/{qid}/delete")
    assert gone.status_code == 303 and gone.headers["location"] == "/queue?done=deleted"
    assert not message_exists(session_factory, qid)
    assert not spool_of(settings).exists(spool_id)
    assert audit_actions(session_factory, qid) == [("queue.delete", "alice")]
    assert admin.get(f"/queue/{qid}").status_code == 404


def test_actions_need_the_csrf_token(
    admin: PortalClient, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    qid, spool_id = queue_message(settings, session_factory, ["bob@remote.example"])
    for url in (f"/queue/{qid}/hold", f"/queue/{qid}/delete"):
        forged = admin.http.post(url, data={"csrf_token": "forged"}, follow_redirects=False)
        assert forged.status_code == 403
        missing = admin.http.post(url, data={}, follow_redirects=False)
        assert missing.status_code == 403
    assert states_of(session_factory, qid) == ["queued"]
    assert spool_of(settings).exists(spool_id)
    assert audit_actions(session_factory, qid) == []


def test_support_reads_but_cannot_act(
    support: PortalClient, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    qid, spool_id = queue_message(settings, session_factory, ["bob@remote.example"])
    assert listed(support.get("/queue").text) == [qid]
    page = support.get(f"/queue/{qid}")
    assert page.status_code == 200
    assert "Retry now" not in page.text and "Delete…" not in page.text
    assert "need an administrator" in page.text
    for action in ("retry", "hold", "release", "delete"):
        assert support.post(f"/queue/{qid}/{action}").status_code == 403, action
    assert support.get(f"/queue/{qid}/delete").status_code == 403
    assert states_of(session_factory, qid) == ["queued"]
    assert spool_of(settings).exists(spool_id)
    assert audit_actions(session_factory, qid) == []


def test_anonymous_is_sent_to_login(anon: PortalClient) -> None:
    response = anon.get("/queue", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login")


def test_a_token_made_in_the_portal_with_the_queue_scope_opens_the_queue_api(
    admin: PortalClient, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    qid, _ = queue_message(settings, session_factory, ["bob@remote.example"])
    form = admin.get("/tokens/new").text
    assert 'value="queue"' in form
    made = admin.post("/tokens/new", {"name": "queue-bot", "scopes": "queue"})
    assert made.status_code == 200, made.text
    secret = re.search(r'<code id="token-secret">([^<]+)</code>', made.text)
    assert secret, "the new token is not shown"
    api = admin.http.get("/api/v1/queue", headers={"Authorization": f"Bearer {secret.group(1)}"})
    assert api.status_code == 200, api.text
    assert [item["queue_id"] for item in api.json()["items"]] == [qid]
