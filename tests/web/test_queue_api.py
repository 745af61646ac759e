"""``/api/v1/queue`` over real queue rows: filters, cursor paging, the ``queue`` scope (403
without it), problem documents, audited actions, and a deleted message's spool file gone."""

# ruff: noqa: F811  (pytest fixtures imported from the helpers are redefined as arguments)
from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.services import accounts
from app.services.audit import CLI_ACTOR
from tests.web.api_helpers import Api, api_fixture, assert_problem, make_token  # noqa: F401
from tests.web.queue_helpers import (  # noqa: F401
    audit_actions,
    defer_all,
    message_exists,
    queue_message,
    settings,
    spool_of,
)


def _ids(body: dict[str, object]) -> list[str]:
    items = body["items"]
    assert isinstance(items, list)
    return [item["queue_id"] for item in items]


def test_every_route_needs_the_queue_scope(
    api: Api, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    qid, spool_id = queue_message(settings, session_factory, ["bob@remote.example"])
    # api.admin holds provisioning + read + billing:read, but not queue.
    for method, url in (
        ("GET", "/api/v1/queue"),
        ("GET", f"/api/v1/queue/{qid}"),
        ("POST", f"/api/v1/queue/{qid}/retry"),
        ("POST", f"/api/v1/queue/{qid}/hold"),
        ("POST", f"/api/v1/queue/{qid}/release"),
        ("DELETE", f"/api/v1/queue/{qid}"),
    ):
        body = assert_problem(api.call(method, url, api.admin), 403)
        assert "'queue' scope" in body["detail"]
        response = api.call(method, url)  # no token at all
        assert_problem(response, 401)
    assert message_exists(session_factory, qid) and spool_of(settings).exists(spool_id)
    assert audit_actions(session_factory, qid) == []


def test_list_filters_and_cursor_paging(
    api: Api, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    token = make_token(session_factory, "queue")
    old = [
        queue_message(settings, session_factory, [f"r{i}@slow.example"], age=7200)[0]
        for i in range(5)
    ]
    other, _ = queue_message(settings, session_factory, ["x@fast.example"], sender="d@o.example")
    bounce, _ = queue_message(settings, session_factory, ["y@slow.example"], sender="")

    everything = api.get("/api/v1/queue", token).json()
    assert _ids(everything) == [*old, other, bounce]
    assert everything["items"][0]["states"] == {"queued": 1}
    assert everything["items"][0]["sender"] == "alice@hosted.example"
    assert _ids(api.get("/api/v1/queue?domain=slow.example", token).json()) == [*old, bounce]
    assert _ids(api.get("/api/v1/queue?sender=D@O.", token).json()) == [other]
    assert _ids(api.get("/api/v1/queue?sender=%3C%3E", token).json()) == [bounce]
    assert _ids(api.get("/api/v1/queue?min_age=3600", token).json()) == old
    assert _ids(api.get("/api/v1/queue?state=delivered", token).json()) == []

    seen: list[str] = []
    url = "/api/v1/queue?domain=slow.example&limit=2"
    while True:
        page = api.get(url, token).json()
        assert len(page["items"]) <= 2
        seen += _ids(page)
        if page["next_cursor"] is None:
            break
        url = f"/api/v1/queue?domain=slow.example&limit=2&cursor={page['next_cursor']}"
    assert seen == [*old, bounce]

    assert_problem(api.get("/api/v1/queue?state=lost", token), 422, "state")
    assert_problem(api.get("/api/v1/queue?domain=not%20a%20domain", token), 422, "domain")
    assert_problem(api.get("/api/v1/queue?cursor=garbage!", token), 422)


def test_show_has_the_last_remote_reply_per_recipient(
    api: Api, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    token = make_token(session_factory, "queue")
    qid, _ = queue_message(settings, session_factory, ["bob@remote.example", "c@remote.example"])
    defer_all(session_factory, code=452, text="4.2.2 mailbox full")
    body = api.get(f"/api/v1/queue/{qid.lower()}", token).json()
    assert body["queue_id"] == qid
    assert [r["address"] for r in body["recipients"]] == ["bob@remote.example", "c@remote.example"]
    for r in body["recipients"]:
        assert r["state"] == "deferred"
        assert r["attempts"] == 1
        assert (r["last_reply_code"], r["last_reply_text"]) == (452, "4.2.2 mailbox full")
        assert r["last_reply_host"] == "mx1.remote.example"
        assert r["next_attempt_at"] is not None
        assert r["leased_by"] is None
    assert_problem(api.get("/api/v1/queue/00000000DEADBEEF", token), 404)
    assert_problem(api.get("/api/v1/queue/not-hex", token), 422)


def test_actions_change_state_answer_409_when_nothing_applies_and_are_audited(
    api: Api, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    token = make_token(session_factory, "queue", name="ops-bot")
    qid, _ = queue_message(settings, session_factory, ["bob@remote.example"])

    held = api.post(f"/api/v1/queue/{qid}/hold", token=token)
    assert held.status_code == 200, held.text
    assert [r["state"] for r in held.json()["recipients"]] == ["held"]
    assert_problem(api.post(f"/api/v1/queue/{qid}/hold", token=token), 409)
    assert_problem(api.post(f"/api/v1/queue/{qid}/retry", token=token), 409)
    released = api.post(f"/api/v1/queue/{qid}/release", token=token).json()
    assert [r["state"] for r in released["recipients"]] == ["queued"]  # never tried yet
    assert api.post(f"/api/v1/queue/{qid}/retry", token=token).status_code == 200
    assert_problem(api.post("/api/v1/queue/00000000DEADBEEF/retry", token=token), 404)

    assert audit_actions(session_factory, qid) == [
        ("queue.hold", "ops-bot"),
        ("queue.release", "ops-bot"),
        ("queue.retry", "ops-bot"),
    ]


def test_delete_removes_rows_and_spool_file(
    api: Api, settings: Settings, session_factory: sessionmaker[Session]
) -> None:
    token = make_token(session_factory, "queue", name="ops-bot")
    qid, spool_id = queue_message(settings, session_factory, ["bob@remote.example"])
    keep, keep_spool = queue_message(settings, session_factory, ["carol@remote.example"])
    response = api.delete(f"/api/v1/queue/{qid}", token)
    assert response.status_code == 204, response.text
    assert not message_exists(session_factory, qid)
    assert not spool_of(settings).exists(spool_id)
    assert message_exists(session_factory, keep) and spool_of(settings).exists(keep_spool)
    assert audit_actions(session_factory, qid) == [("queue.delete", "ops-bot")]
    assert_problem(api.delete(f"/api/v1/queue/{qid}", token), 404)


def test_a_token_with_the_queue_scope_can_be_created(
    session_factory: sessionmaker[Session],
) -> None:
    with transaction(session_factory) as s:
        token, _ = accounts.create_token(s, actor=CLI_ACTOR, name="q", scopes=["queue", "read"])
        assert token.scope_list == ["queue", "read"]
