"""``mailhost domain scan`` / ``customer scan`` / ``domain scan-list``: inheritance, changes,
audit; bad values exit non-zero with one line and change nothing."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.models import AuditEntry, ScanListEntry
from tests.unit.test_cli import Run, assert_one_line_error, run  # noqa: F401


def _setup(run: Run) -> None:  # noqa: F811
    assert run("customer", "add", "Acme").status == 0
    assert run("domain", "add", "acme.example", "--customer", "Acme").status == 0


def test_domain_inherits_customer_which_inherits_platform(run: Run, session: Session) -> None:  # noqa: F811
    _setup(run)
    row = run("domain", "scan", "acme.example", "--json").json()
    assert (row["reject_score"], row["tag_score"], row["subject_tag"]) == (15.0, 6.0, "[SPAM]")
    assert row["reject_score_own"] == "default" and row["greylisting"] is False
    changed = run("customer", "scan", "Acme", "--reject-score", "12", "--greylisting", "on")
    assert changed.status == 0, changed
    row = run("domain", "scan", "acme.example", "--json").json()
    assert (row["reject_score"], row["greylisting"], row["reject_score_own"]) == (
        12.0,
        True,
        "default",
    )
    row = run(
        "domain",
        "scan",
        "acme.example",
        "--reject-score",
        "20",
        "--subject-tag",
        "***SPAM***",
        "--json",
    ).json()
    assert (row["reject_score"], row["reject_score_own"], row["subject_tag"]) == (
        20.0,
        20.0,
        "***SPAM***",
    )
    row = run("domain", "scan", "acme.example", "--reject-score", "default", "--json").json()
    assert row["reject_score"] == 12.0  # the customer's again
    actions = set(session.scalars(select(AuditEntry.action)))
    assert {"customer.scan_policy_changed", "domain.scan_policy_changed"} <= actions


def test_bad_policy_values_are_refused_and_change_nothing(run: Run) -> None:  # noqa: F811
    _setup(run)
    assert_one_line_error(
        run("domain", "scan", "acme.example", "--reject-score", "lots"), "reject_score"
    )
    assert_one_line_error(
        run("domain", "scan", "acme.example", "--reject-score", "5", "--tag-score", "9"),
        "tag_score must be below reject_score",
    )
    assert_one_line_error(run("domain", "scan", "acme.example", "--tag-score", "nan"), "tag_score")
    row = run("domain", "scan", "acme.example", "--json").json()
    assert (row["reject_score_own"], row["tag_score_own"]) == ("default", "default")


def test_scan_list_add_show_remove(run: Run, session: Session) -> None:  # noqa: F811
    _setup(run)
    added = run(
        "domain",
        "scan-list",
        "acme.example",
        "allow",
        "--add",
        "Boss@Partner.Example",
        "--add",
        "partner.example",
        "--add",
        "192.0.2.7/24",
        "--json",
    )
    assert added.status == 0, added
    assert added.json() == [
        {"list": "allow", "kind": "network", "value": "192.0.2.0/24"},
        {"list": "allow", "kind": "sender", "value": "boss@partner.example"},
        {"list": "allow", "kind": "domain", "value": "partner.example"},
    ]
    assert_one_line_error(
        run("domain", "scan-list", "acme.example", "allow", "--add", "partner.example"),
        "already on the allow list",
    )
    assert_one_line_error(
        run("domain", "scan-list", "acme.example", "block", "--add", "300.1.2.3/8"),
        "invalid network",
    )
    assert_one_line_error(
        run("domain", "scan-list", "acme.example", "block", "--remove", "x@partner.example"),
        "not on the block list",
    )
    removed = run("domain", "scan-list", "acme.example", "allow", "--remove", "partner.example")
    assert removed.status == 0
    assert sorted(session.scalars(select(ScanListEntry.value))) == [
        "192.0.2.0/24",
        "boss@partner.example",
    ]
