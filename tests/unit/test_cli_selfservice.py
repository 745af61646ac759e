"""``mailhost mailbox forward`` / ``mailbox autoreply``: show, set, clear, audit; bad values
exit non-zero with one line and change nothing."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import AuditEntry, AutoReply, MailboxForward
from tests.unit.test_cli import Run, assert_one_line_error, run  # noqa: F401

BOX = "alice@acme.example"


def _setup(run: Run) -> None:  # noqa: F811
    assert run("customer", "add", "Acme").status == 0
    assert run("domain", "add", "acme.example", "--customer", "Acme").status == 0
    assert run("mailbox", "add", BOX, "--generate-password").status == 0
    assert run("mailbox", "add", "bob@acme.example", "--generate-password").status == 0


def test_forward_show_set_clear(run: Run, session: Session) -> None:  # noqa: F811
    _setup(run)
    assert run("mailbox", "forward", BOX, "--json").json()["forward_to"] is None
    remote = run("mailbox", "forward", BOX, "--to", "Someone@Remote.Example", "--json")
    assert remote.status == 0, remote
    row = remote.json()
    assert (row["forward_to"], row["keep_copy"], row["hosted"]) == (
        "Someone@remote.example",
        True,
        False,
    )
    hosted = run("mailbox", "forward", BOX, "--to", "BOB@acme.example", "--no-copy", "--json")
    assert hosted.json() == {
        "address": BOX,
        "forward_to": "bob@acme.example",
        "keep_copy": False,
        "hosted": True,
    }
    assert_one_line_error(run("mailbox", "forward", BOX, "--to", "bad address"), "invalid address")
    assert_one_line_error(run("mailbox", "forward", BOX, "--to", BOX), "cannot forward to itself")
    assert run("mailbox", "forward", BOX, "--clear").status == 0
    assert session.scalars(select(MailboxForward)).all() == []
    actions = session.scalars(
        select(AuditEntry.action).where(AuditEntry.action.like("mailbox.forward%"))
    ).all()
    assert actions == ["mailbox.forward", "mailbox.forward", "mailbox.forward_cleared"]


def test_autoreply_set_and_clear(run: Run, session: Session) -> None:  # noqa: F811
    _setup(run)
    assert run("mailbox", "autoreply", BOX, "--json").json()["auto_reply"] == "none"
    result = run(
        "mailbox",
        "autoreply",
        BOX,
        "--subject",
        "Away",
        "--body-stdin",
        "--starts",
        "2026-12-20",
        "--until",
        "2027-01-06",
        "--json",
        stdin="Back on 7 January.\n",
    )
    assert result.status == 0, result
    assert result.json() == {
        "address": BOX,
        "auto_reply": "on",
        "starts_on": "2026-12-20",
        "ends_on": "2027-01-06",
        "subject": "Away",
        "body": "Back on 7 January.",
    }
    bad = run("mailbox", "autoreply", BOX, "--subject", "x", "--body", "y", "--until", "6.1.")
    assert_one_line_error(bad, "--until takes YYYY-MM-DD")
    backwards = run(
        "mailbox",
        "autoreply",
        BOX,
        "--subject",
        "x",
        "--body",
        "y",
        "--starts",
        "2027-01-02",
        "--until",
        "2027-01-01",
    )
    assert_one_line_error(backwards, "end date is before the start date")
    assert session.scalars(select(AutoReply.subject)).all() == ["Away"]
    assert run("mailbox", "autoreply", BOX, "--clear").status == 0
    assert session.scalars(select(AutoReply)).all() == []
