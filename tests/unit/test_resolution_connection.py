"""Resolution through a Core Connection (what the SMTP edge does for every RCPT) gives every
verdict of the Session tables in tests/unit/test_resolution.py, in one query for a mailbox."""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.maildir import MailboxRef, MaildirStore
from app.services.resolution import resolve_recipient
from tests.factories import make_alias, make_domain
from tests.unit.test_resolution import (
    FULL,
    NO_USER,
    OK,
    POSTMASTER_ROWS,
    ROWS,
    _fill,
    _mailbox,
    build_world,
)


def _got(result: object) -> tuple[object, tuple[str, ...]]:
    verdict = result.verdict  # type: ignore[attr-defined]
    return verdict, tuple(sorted(t.address for t in result.targets))  # type: ignore[attr-defined]


def test_resolution_tables_through_a_connection(session: Session, engine: Engine) -> None:
    build_world(session)
    session.commit()
    failures = []
    with engine.connect() as connection:
        for address, verdict, targets in ROWS:
            got = _got(resolve_recipient(connection, address=address))
            if got != (verdict, targets):
                failures.append(f"{address!r}: expected {(verdict, targets)}, got {got}")
        for address, platform, verdict, targets in POSTMASTER_ROWS:
            result = resolve_recipient(connection, address=address, postmaster_address=platform)
            if _got(result) != (verdict, targets):
                failures.append(f"{address!r} ({platform}): expected {verdict}, got {_got(result)}")
    assert not failures, "\n".join(failures)
    assert len(ROWS) > 50 and len(POSTMASTER_ROWS) > 5


def test_over_quota_through_a_connection(
    session: Session, engine: Engine, store: MaildirStore
) -> None:
    make_domain(session, "hosted.example")
    _mailbox(session, "full@hosted.example", quota=1000)
    _mailbox(session, "room@hosted.example", quota=1000)
    make_alias(session, "both@hosted.example", ["full@hosted.example", "room@hosted.example"])
    session.commit()
    _fill(store, MailboxRef("hosted.example", "full"), 1000)
    rows = [
        ("full@hosted.example", FULL, ()),
        ("both@hosted.example", OK, ("room@hosted.example",)),
        ("nobody@hosted.example", NO_USER, ()),
    ]
    with engine.connect() as connection:
        for address, verdict, targets in rows:
            result = resolve_recipient(connection, address=address, store=store)
            assert _got(result) == (verdict, targets), address


def test_a_plain_mailbox_is_one_select_through_a_connection(
    session: Session, engine: Engine
) -> None:
    build_world(session)
    session.commit()
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    with engine.connect() as connection:
        event.listen(engine, "before_cursor_execute", count)
        try:
            assert resolve_recipient(connection, address="User@Hosted.Example").ok
        finally:
            event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1 and statements[0].lstrip().upper().startswith("SELECT")
