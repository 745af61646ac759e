"""Mailbox provisioning: addresses, passwords and imported hashes, limits, lifecycle, listing."""

from __future__ import annotations

import pytest
from passlib.hash import sha512_crypt
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.errors import ConflictError, LimitExceededError, NotFoundError, ValidationError
from app.models import AuditEntry, LifecycleEvent, Mailbox
from app.passwords import verify_password
from app.services import mailboxes
from app.services.audit import CLI_ACTOR
from tests.factories import make_alias, make_customer, make_domain, make_mailbox


def _events(session: Session) -> list[tuple[str, str | None]]:
    return [
        (e.action, e.address)
        for e in session.scalars(
            select(LifecycleEvent)
            .where(LifecycleEvent.entity == "mailbox")
            .order_by(LifecycleEvent.id)
        )
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1024", 1024),
        ("100k", 100 * 1024),
        ("100K", 100 * 1024),
        ("500M", 500 * 1024**2),
        ("500MB", 500 * 1024**2),
        ("1G", 1024**3),
        ("1GiB", 1024**3),
        ("1.5G", 3 * 1024**3 // 2),
        ("2T", 2 * 1024**4),
        (" 0 ", 0),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert mailboxes.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "-1", "1X", "1 G B", "1e3", "ten", "99999999999T"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValidationError):
        mailboxes.parse_size(text)


def test_create_mailbox(session: Session) -> None:
    make_domain(session, "hosted.example", default_quota_bytes=5000)
    mailbox = mailboxes.create_mailbox(
        session, actor=CLI_ACTOR, address="John.Doe@HOSTED.example", password="long enough"
    )
    assert mailbox.address == "john.doe@hosted.example"
    assert mailbox.quota_bytes == 5000
    assert mailbox.password_hash.startswith("$argon2id$")
    assert verify_password("long enough", mailbox.password_hash)[0]
    assert (mailbox.status, mailbox.pop3_enabled, mailbox.last_login_at) == ("active", True, None)
    assert _events(session) == [("created", "john.doe@hosted.example")]
    entry = session.scalars(select(AuditEntry).where(AuditEntry.object_type == "mailbox")).one()
    assert (entry.action, entry.object_name) == ("mailbox.create", "john.doe@hosted.example")
    assert "long enough" not in (entry.detail or "")
    assert mailboxes.get_mailbox_by_address(session, address="JOHN.DOE@hosted.example") is mailbox


def test_create_mailbox_with_imported_hash(session: Session) -> None:
    make_domain(session, "hosted.example")
    legacy = "{SHA512-CRYPT}" + sha512_crypt.using(rounds=5000).hash("old password")
    mailbox = make_mailbox(session, "old@hosted.example", password_hash=legacy)
    assert mailbox.password_hash == legacy
    with pytest.raises(ValidationError) as info:
        make_mailbox(session, "bad@hosted.example", password_hash="{PLAIN}secret")
    assert info.value.field == "password_hash"


@pytest.mark.parametrize(
    ("address", "kwargs", "error", "field"),
    [
        ("bad address@hosted.example", {}, ValidationError, "address"),
        ("user%x@hosted.example", {}, ValidationError, "address"),
        ('"q"@hosted.example', {}, ValidationError, "address"),
        ("user@[192.0.2.1]", {}, ValidationError, "address"),
        ("../x@hosted.example", {}, ValidationError, "address"),
        ("a" * 65 + "@hosted.example", {}, ValidationError, "address"),
        ("user@elsewhere.example", {}, NotFoundError, "domain"),
        ("taken@hosted.example", {}, ConflictError, "address"),
        ("TAKEN@hosted.example", {}, ConflictError, "address"),
        ("list@hosted.example", {}, ConflictError, "address"),
        ("new@hosted.example", {"password": "short"}, ValidationError, "password"),
        ("new@hosted.example", {"password": None}, ValidationError, "password"),
        ("new@hosted.example", {"quota_bytes": -1}, ValidationError, "quota_bytes"),
    ],
)
def test_create_mailbox_refuses(
    session: Session,
    address: str,
    kwargs: dict[str, object],
    error: type[Exception],
    field: str,
) -> None:
    make_domain(session, "hosted.example")
    make_mailbox(session, "taken@hosted.example")
    make_alias(session, "list@hosted.example", ["taken@hosted.example"])
    before = session.scalar(select(func.count(Mailbox.id)))
    args: dict[str, object] = {"password": "long enough", **kwargs}
    with pytest.raises(error) as info:
        mailboxes.create_mailbox(session, actor=CLI_ACTOR, address=address, **args)  # type: ignore[arg-type]
    assert info.value.field == field  # type: ignore[attr-defined]
    assert session.scalar(select(func.count(Mailbox.id))) == before


def test_both_password_and_hash_is_refused(session: Session) -> None:
    make_domain(session, "hosted.example")
    with pytest.raises(ValidationError):
        mailboxes.create_mailbox(
            session,
            actor=CLI_ACTOR,
            address="x@hosted.example",
            password="long enough",
            password_hash=sha512_crypt.hash("x"),
        )


def test_domain_limits(session: Session) -> None:
    make_domain(session, "hosted.example", max_mailboxes=2, total_quota_bytes=1000)
    make_mailbox(session, "a@hosted.example", quota=400)
    with pytest.raises(LimitExceededError) as info:
        make_mailbox(session, "b@hosted.example", quota=601)
    assert info.value.field == "quota_bytes"
    b = make_mailbox(session, "b@hosted.example", quota=600)
    with pytest.raises(LimitExceededError) as info:
        make_mailbox(session, "c@hosted.example", quota=0)
    assert "at most 2 mailboxes" in info.value.message
    with pytest.raises(LimitExceededError):
        mailboxes.update_mailbox(session, actor=CLI_ACTOR, mailbox_id=b.id, quota_bytes=601)
    mailboxes.update_mailbox(session, actor=CLI_ACTOR, mailbox_id=b.id, quota_bytes=100)
    assert b.quota_bytes == 100


def test_failed_create_leaves_no_rows_and_no_audit(session_factory: sessionmaker[Session]) -> None:
    with transaction(session_factory) as s:
        make_domain(s, "hosted.example", max_mailboxes=1)
    with transaction(session_factory) as s:
        audits_before = s.scalar(select(func.count(AuditEntry.id)))
        events_before = s.scalar(select(func.count(LifecycleEvent.id)))
    with pytest.raises(LimitExceededError), transaction(session_factory) as s:
        make_mailbox(s, "first@hosted.example")
        make_mailbox(s, "second@hosted.example")
    with session_factory() as s:
        assert s.scalar(select(func.count(Mailbox.id))) == 0
        assert s.scalar(select(func.count(AuditEntry.id))) == audits_before
        assert s.scalar(select(func.count(LifecycleEvent.id))) == events_before


def test_status_password_pop3_and_delete(session: Session) -> None:
    mailbox = make_mailbox(session, "user@hosted.example")
    for status in ("suspended", "suspended", "active"):
        mailboxes.set_mailbox_status(session, actor=CLI_ACTOR, mailbox_id=mailbox.id, status=status)
    mailboxes.set_password(
        session, actor=CLI_ACTOR, mailbox_id=mailbox.id, password="another password"
    )
    assert verify_password("another password", mailbox.password_hash)[0]
    with pytest.raises(ValidationError):
        mailboxes.set_password(session, actor=CLI_ACTOR, mailbox_id=mailbox.id, password="short")
    mailboxes.update_mailbox(session, actor=CLI_ACTOR, mailbox_id=mailbox.id, pop3_enabled=False)
    assert mailbox.pop3_enabled is False
    mailbox_id = mailbox.id
    mailboxes.delete_mailbox(session, actor=CLI_ACTOR, mailbox_id=mailbox_id)
    with pytest.raises(NotFoundError):
        mailboxes.get_mailbox(session, mailbox_id=mailbox_id)
    assert _events(session) == [
        ("created", "user@hosted.example"),
        ("suspended", "user@hosted.example"),
        ("resumed", "user@hosted.example"),
        ("deleted", "user@hosted.example"),
    ]
    actions = session.scalars(
        select(AuditEntry.action).where(AuditEntry.object_type == "mailbox").order_by(AuditEntry.id)
    ).all()
    assert actions == [
        "mailbox.create",
        "mailbox.suspend",
        "mailbox.resume",
        "mailbox.password",
        "mailbox.update",
        "mailbox.delete",
    ]


def test_listing_filters_and_keyset_pagination(session: Session) -> None:
    acme = make_customer(session, "Acme")
    other = make_customer(session, "Other")
    make_domain(session, "a.example", acme)
    make_domain(session, "b.example", other)
    ids = [make_mailbox(session, f"user{i}@a.example").id for i in range(5)]
    theirs = make_mailbox(session, "user9@b.example").id
    mailboxes.set_mailbox_status(session, actor=CLI_ACTOR, mailbox_id=ids[1], status="suspended")
    assert [m.id for m in mailboxes.list_mailboxes(session, customer_id=acme.id)] == ids
    assert [m.id for m in mailboxes.list_mailboxes(session, customer_id=other.id)] == [theirs]
    page = mailboxes.list_mailboxes(session, limit=2, after_id=ids[1])
    assert [m.id for m in page] == ids[2:4]
    assert [m.id for m in mailboxes.list_mailboxes(session, search="USER9@B")] == [theirs]
    assert [m.id for m in mailboxes.list_mailboxes(session, status="suspended")] == [ids[1]]
    assert mailboxes.count_mailboxes(session) == 6
    assert mailboxes.count_mailboxes(session, status="active") == 5


def test_generated_passwords() -> None:
    passwords = {mailboxes.generate_password() for _ in range(50)}
    assert len(passwords) == 50
    for password in passwords:
        assert len(password) == 16
        assert not set(password) & set("0O1lI")
