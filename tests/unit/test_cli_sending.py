"""``mailhost mailbox sending`` / ``customer sending``: show, change, audit; bad values exit
non-zero with one line and change nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.models import AuditEntry, utcnow
from app.services import sending
from tests.unit.test_cli import Run, assert_one_line_error, run, snapshot  # noqa: F401


def _setup(run: Run) -> None:  # noqa: F811
    assert run("customer", "add", "Acme").status == 0
    assert run("domain", "add", "acme.example", "--customer", "Acme").status == 0
    assert run("mailbox", "add", "alice@acme.example", "--generate-password").status == 0


def test_mailbox_sending_show_change_and_audit(run: Run, session: Session) -> None:  # noqa: F811
    _setup(run)
    shown = run("mailbox", "sending", "alice@acme.example", "--json")
    assert shown.status == 0, shown
    row = shown.json()
    assert row["may_send"] is True
    assert (row["messages_per_hour_limit"], row["messages_per_hour_own_limit"]) == (200, "default")
    assert (row["recipients_per_day_limit"], row["recipients_per_day_used"]) == (1000, 0)
    assert row["sending_limited"] is False

    changed = run(
        "mailbox",
        "sending",
        "alice@acme.example",
        "--no-may-send",
        "--max-messages-per-hour",
        "50",
        "--max-recipients-per-day",
        "1,500",
        "--json",
    )
    assert changed.status == 0, changed
    row = changed.json()
    assert row["may_send"] is False
    assert (row["messages_per_hour_limit"], row["messages_per_hour_own_limit"]) == (50, 50)
    assert row["recipients_per_day_limit"] == 1500
    entry = session.scalars(
        select(AuditEntry).where(AuditEntry.action == "mailbox.sending_changed")
    ).one()
    assert (entry.actor_type, entry.object_name) == ("cli", "alice@acme.example")
    assert entry.detail == (
        "may_send: True -> False; max_messages_per_hour: default -> 50; "
        "max_recipients_per_day: default -> 1500"
    )
    back = run(
        "mailbox",
        "sending",
        "alice@acme.example",
        "--may-send",
        "--max-messages-per-hour",
        "default",
        "--json",
    ).json()
    assert back["may_send"] is True and back["messages_per_hour_own_limit"] == "default"
    text = run("mailbox", "sending", "alice@acme.example")
    assert text.status == 0 and "messages_per_hour_limit" in text.out


def test_flag_shown_and_cleared(run: Run, session: Session) -> None:  # noqa: F811
    _setup(run)
    assert (
        run("mailbox", "sending", "alice@acme.example", "--max-messages-per-hour", "1").status == 0
    )
    mailbox_id = session.scalar(
        select(AuditEntry.object_id).where(AuditEntry.action == "mailbox.sending_changed")
    )
    assert mailbox_id is not None
    now = utcnow()
    sending.consume_sending(session, mailbox_id=int(mailbox_id), recipients=1, now=now)
    with pytest.raises(sending.SendLimitExceeded) as info:
        sending.consume_sending(session, mailbox_id=int(mailbox_id), recipients=1, now=now)
    sending.record_limit_hit(session, mailbox_id=int(mailbox_id), error=info.value, now=now)
    session.commit()
    row = run("mailbox", "sending", "alice@acme.example", "--json").json()
    assert row["sending_limited"] is True
    assert row["messages_per_hour_used"] == 1
    assert row["limited_reason"].startswith("mailbox alice@acme.example sent 1 messages this hour")
    row = run("mailbox", "sending", "alice@acme.example", "--clear-flag", "--json").json()
    assert row["sending_limited"] is False


def test_customer_sending(run: Run, session: Session) -> None:  # noqa: F811
    _setup(run)
    row = run("customer", "sending", "Acme", "--json").json()
    assert (row["messages_per_hour_limit"], row["recipients_per_day_limit"]) == (2000, 10000)
    row = run("customer", "sending", "Acme", "--max-messages-per-hour", "300", "--json").json()
    assert (row["messages_per_hour_limit"], row["messages_per_hour_own_limit"]) == (300, 300)
    assert (
        session.scalar(
            select(AuditEntry.detail).where(AuditEntry.action == "customer.sending_changed")
        )
        == "max_messages_per_hour: default -> 300"
    )


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("-5", "max_messages_per_hour must be at least 1, not -5"),
        ("0", "turn off may_send"),
        ("10000001", "must be at most 10000000"),
        ("lots", "max_messages_per_hour must be a whole number or 'default', not 'lots'"),
        ("1.5", "must be a whole number"),
    ],
)
def test_bad_limits_change_nothing(
    run: Run,  # noqa: F811
    engine: Engine,
    value: str,
    fragment: str,
) -> None:
    _setup(run)
    before = snapshot(engine)
    result = run(
        "mailbox",
        "sending",
        "alice@acme.example",
        "--no-may-send",
        "--max-messages-per-hour",
        value,
    )
    assert_one_line_error(result, fragment)
    result = run("customer", "sending", "Acme", "--max-messages-per-hour", value)
    assert_one_line_error(result, fragment)
    assert snapshot(engine) == before


def test_unknown_mailbox(run: Run) -> None:  # noqa: F811
    _setup(run)
    assert_one_line_error(run("mailbox", "sending", "bob@acme.example"), "bob@acme.example")
