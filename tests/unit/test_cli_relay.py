"""``mailhost domain add --relay`` and ``mailhost relay ...``: settings, recipients (CSV import /
export), flush / hold / release, removal with queued mail; errors exit non-zero with one line
and change nothing."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.models import AuditEntry, OutboundRecipient, utcnow
from app.services import queue
from tests.unit.test_cli import Run, assert_one_line_error, run, snapshot  # noqa: F401


def _setup(run: Run) -> None:  # noqa: F811
    assert run("customer", "add", "Shop").status == 0
    added = run(
        "domain",
        "add",
        "shop.example",
        "--customer",
        "Shop",
        "--relay",
        "--next-hop",
        "Mail.Shop.Example:2525",
        "--max-queue-age",
        "3d",
        "--flush-network",
        "192.0.2.7",
        "--json",
    )
    assert added.status == 0, added
    row = added.json()
    assert (row["next_hop"], row["recipient_mode"], row["tls_policy"]) == (
        "mail.shop.example:2525",
        "list",
        "opportunistic",
    )
    assert (row["max_queue_age_seconds"], row["flush_networks"]) == (3 * 86400, ["192.0.2.7/32"])


def test_relay_domain_settings_and_errors(run: Run, engine: Engine) -> None:  # noqa: F811
    _setup(run)
    shown = run("domain", "show", "shop.example", "--json")
    assert shown.json()["kind"] == "relay"
    changed = run(
        "relay", "set", "shop.example", "--recipients", "verify", "--callout-cache", "10m", "--json"
    )
    assert changed.status == 0, changed
    assert (changed.json()["recipient_mode"], changed.json()["callout_cache_seconds"]) == (
        "verify",
        600,
    )
    listed = run("relay", "list")
    assert listed.status == 0 and "shop.example" in listed.out and "verify" in listed.out
    before = snapshot(engine)
    for argv, fragments in [
        (("relay", "set", "shop.example", "--next-hop", "127.0.0.1:2525"), ("mail loop",)),
        (("relay", "set", "shop.example", "--next-hop", "mx.mailhost.example"), ("mail loop",)),
        (("relay", "set", "shop.example", "--next-hop", "host:99999"), ("1-65535",)),
        (("relay", "set", "shop.example", "--max-queue-age", "soon"), ("duration",)),
        (("relay", "set", "shop.example", "--flush-network", "300.1.1.1"), ("invalid network",)),
        (("relay", "show", "nowhere.example"), ("not hosted",)),
        (
            ("domain", "add", "b.example", "--customer", "Shop", "--relay", "--next-hop", "x"),
            ("invalid next hop",),
        ),
    ]:
        assert_one_line_error(run(*argv), *fragments)
    assert_one_line_error(run("relay", "set", "shop.example"), "nothing to change", status=2)
    assert_one_line_error(
        run("domain", "add", "c.example", "--customer", "Shop", "--relay"), "--next-hop", status=2
    )
    assert snapshot(engine) == before
    hosted = run("domain", "add", "office.example", "--customer", "Shop")
    assert hosted.status == 0
    converted = run("relay", "convert", "office.example", "--next-hop", "mx:office.example")
    assert converted.status == 0, converted
    assert "mx:office.example" in converted.out


def test_recipients_import_export(run: Run, tmp_path: Path, session: Session) -> None:  # noqa: F811
    _setup(run)
    assert (
        run("relay", "recipients", "add", "shop.example", "anna", "Bert@shop.example").status == 0
    )
    assert_one_line_error(
        run("relay", "recipients", "add", "shop.example", "anna"), "already listed"
    )
    csv_file = tmp_path / "in.csv"
    csv_file.write_text("address\ncarl@shop.example\nanna\n", "utf-8")
    imported = run("relay", "recipients", "import", "shop.example", str(csv_file))
    assert imported.out.strip() == "1 added, 1 already listed, 0 removed"
    bad = run("relay", "recipients", "import", "shop.example", "-", stdin="dora\nx@other.example\n")
    assert_one_line_error(bad, "line 2", "not an address of shop.example")
    exported = run("relay", "recipients", "export", "shop.example")
    assert exported.out.splitlines() == [
        "address",
        "anna@shop.example",
        "bert@shop.example",
        "carl@shop.example",
    ]
    again = run("relay", "recipients", "import", "shop.example", "-", "--replace", stdin="anna\n")
    assert again.out.strip() == "0 added, 1 already listed, 2 removed"
    listed = run("relay", "recipients", "list", "shop.example", "--json")
    assert [r["address"] for r in listed.json()] == ["anna@shop.example"]
    assert run("relay", "recipients", "remove", "shop.example", "anna").status == 0
    assert_one_line_error(
        run("relay", "recipients", "remove", "shop.example", "anna"), "not listed"
    )
    actions = session.scalars(select(AuditEntry.action).where(AuditEntry.actor_type == "cli")).all()
    assert "relay.recipient_import" in actions and "relay.recipient_remove" in actions


def test_flush_hold_release_and_remove_with_queued_mail(
    run: Run,  # noqa: F811
    session: Session,
    tmp_path: Path,
) -> None:
    _setup(run)
    from app.spool import SpoolStore

    spool = SpoolStore(tmp_path / "var" / "spool")  # the CLI's default spool_root, cwd tmp_path
    file = spool.write([b"Subject: x\r\n\r\nhi\r\n"])
    queue.enqueue(
        session,
        spool_id=file.spool_id,
        size=file.size,
        sender="a@sender.example",
        recipients=["anna@shop.example"],
        origin="relay",
        now=utcnow(),
    )
    session.commit()
    held = run("relay", "hold", "shop.example", "--reason", "office closed")
    assert held.out.strip() == "relay domain shop.example held (1 queued recipient(s) held)"
    shown = run("relay", "show", "shop.example", "--json").json()
    assert (shown["held"], shown["hold_reason"], shown["queued"], shown["queued_held"]) == (
        True,
        "office closed",
        1,
        1,
    )
    assert_one_line_error(run("relay", "flush", "shop.example"), "release it first")
    assert run("relay", "release", "shop.example").status == 0
    assert run("relay", "flush", "shop.example").status == 0
    assert_one_line_error(run("relay", "remove", "shop.example"), "1 queued recipient")
    assert_one_line_error(run("domain", "remove", "shop.example"), "1 queued recipient")
    assert spool.exists(file.spool_id)
    removed = run("relay", "remove", "shop.example", "--discard-queued")
    assert removed.out.strip() == "relay domain shop.example removed, 1 queued message(s) discarded"
    assert not spool.exists(file.spool_id)
    session.expire_all()
    assert session.scalars(select(OutboundRecipient)).all() == []
    discard = session.scalars(select(AuditEntry).where(AuditEntry.action == "relay.discard")).one()
    assert discard.actor_type == "cli" and "1 queued recipient(s) discarded" in (
        discard.detail or ""
    )
