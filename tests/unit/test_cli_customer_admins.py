"""``mailhost customer-admin ...`` and ``mailhost operator totp reset`` (issue 15)."""

from __future__ import annotations

from app.db import transaction
from app.services import totp
from tests.unit.test_cli import Run, run  # noqa: F401


def test_customer_admin_add_list_password_remove(run: Run) -> None:  # noqa: F811
    assert run("customer", "add", "Acme").status == 0
    added = run("customer-admin", "add", "Acme", "carol", "--generate-password", "--json")
    assert added.status == 0, added.err
    row = added.json()
    assert row["username"] == "carol" and row["customer"] == "Acme" and len(row["password"]) >= 8
    # User names are shared with operators: one login form serves both.
    clash = run("operator", "add", "carol", "--generate-password")
    assert clash.status != 0 and "carol" in clash.err
    assert run("customer-admin", "add", "Acme", "carol", "--generate-password").status != 0
    listed = run("customer-admin", "list", "--customer", "Acme", "--json").json()
    assert [r["username"] for r in listed] == ["carol"]
    assert run("customer-admin", "add", "Nobody", "dave", "--generate-password").status != 0
    assert run("customer-admin", "password", "carol", "--generate-password").status == 0
    assert run("customer-admin", "remove", "carol").status == 0
    assert run("customer-admin", "list", "--json").json() == []
    assert run("customer-admin", "remove", "carol").status != 0


def test_operator_totp_reset(run: Run, session_factory) -> None:  # noqa: F811, ANN001
    assert run("operator", "add", "olga", "--generate-password").status == 0
    assert "had no two-factor" in run("operator", "totp", "reset", "olga").out
    with transaction(session_factory) as session:
        from app.services import accounts

        op = accounts.get_operator_by_username(session, username="olga")
        totp.begin_enrolment(session, owner=totp.Owner("operator", op.id, "olga"))
    reset = run("operator", "totp", "reset", "olga")
    assert reset.status == 0 and "turned off" in reset.out
    assert run("operator", "totp", "reset", "nobody").status != 0


def test_removing_the_customer_removes_its_administrators(run: Run) -> None:  # noqa: F811
    assert run("customer", "add", "Acme").status == 0
    assert run("customer-admin", "add", "Acme", "carol", "--generate-password").status == 0
    removed = run("customer", "remove", "Acme")
    assert removed.status == 0, removed.err
    assert run("customer-admin", "list", "--json").json() == []
    # The name is free again.
    assert run("operator", "add", "carol", "--generate-password").status == 0
