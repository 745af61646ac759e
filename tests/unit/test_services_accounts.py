"""Logins, operators, API tokens and failed-login throttling."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from passlib.hash import md5_crypt, sha512_crypt
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import passwords
from app.errors import ConflictError, NotFoundError, ValidationError
from app.models import ApiToken, AuditEntry
from app.services import accounts, customers, domains, mailboxes
from app.services.audit import CLI_ACTOR
from tests.factories import DEFAULT_PASSWORD, make_mailbox, make_operator


# ------------------------------------------------------------------ mailbox logins
def test_mailbox_login_any_case_records_last_login(session: Session) -> None:
    mailbox = make_mailbox(session, "user@hosted.example")
    now = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    got = accounts.authenticate_mailbox(
        session, address="USER@Hosted.Example", password=DEFAULT_PASSWORD, now=now
    )
    assert got is mailbox
    assert mailbox.last_login_at == now


@pytest.mark.parametrize(
    "legacy",
    [
        "{SHA512-CRYPT}" + sha512_crypt.using(rounds=5000).hash("old password"),
        sha512_crypt.using(rounds=5000).hash("old password"),
        "{MD5-CRYPT}" + md5_crypt.hash("old password"),
        md5_crypt.hash("old password"),
    ],
)
def test_legacy_hash_is_replaced_by_argon2_on_successful_login(
    session: Session, legacy: str
) -> None:
    mailbox = make_mailbox(session, "old@hosted.example", password_hash=legacy)
    assert accounts.authenticate_mailbox(session, address=mailbox.address, password="wrong") is None
    assert mailbox.password_hash == legacy  # a failed login changes nothing
    assert (
        accounts.authenticate_mailbox(session, address=mailbox.address, password="old password")
        is mailbox
    )
    assert mailbox.password_hash.startswith("$argon2id$")
    session.commit()
    session.expire_all()
    stored = mailboxes.get_mailbox(session, mailbox_id=mailbox.id).password_hash
    assert stored.startswith("$argon2id$")
    assert accounts.authenticate_mailbox(session, address=mailbox.address, password="old password")


def test_refusals(session: Session) -> None:
    mailbox = make_mailbox(session, "user@hosted.example")
    other = make_mailbox(session, "other@hosted.example")
    domain = mailbox.domain
    ok = {"address": "user@hosted.example", "password": DEFAULT_PASSWORD}
    assert (
        accounts.authenticate_mailbox(session, address="user@hosted.example", password="nope")
        is None
    )
    assert (
        accounts.authenticate_mailbox(session, address="user@hosted.example", password="") is None
    )
    assert (
        accounts.authenticate_mailbox(
            session, address="other@hosted.example", password=DEFAULT_PASSWORD + " "
        )
        is None
    )
    # wrong account, right password of another one
    mailboxes.set_password(session, actor=CLI_ACTOR, mailbox_id=other.id, password="other secret")
    assert (
        accounts.authenticate_mailbox(
            session, address="user@hosted.example", password="other secret"
        )
        is None
    )

    mailboxes.set_mailbox_status(
        session, actor=CLI_ACTOR, mailbox_id=mailbox.id, status="suspended"
    )
    assert accounts.authenticate_mailbox(session, **ok) is None
    mailboxes.set_mailbox_status(session, actor=CLI_ACTOR, mailbox_id=mailbox.id, status="active")

    domains.set_domain_status(session, actor=CLI_ACTOR, domain_id=domain.id, status="suspended")
    assert accounts.authenticate_mailbox(session, **ok) is None
    domains.set_domain_status(session, actor=CLI_ACTOR, domain_id=domain.id, status="active")

    customers.set_customer_status(
        session, actor=CLI_ACTOR, customer_id=domain.customer_id, status="suspended"
    )
    assert accounts.authenticate_mailbox(session, **ok) is None
    customers.set_customer_status(
        session, actor=CLI_ACTOR, customer_id=domain.customer_id, status="active"
    )

    mailboxes.update_mailbox(session, actor=CLI_ACTOR, mailbox_id=mailbox.id, pop3_enabled=False)
    assert accounts.authenticate_mailbox(session, **ok) is None
    mailboxes.update_mailbox(session, actor=CLI_ACTOR, mailbox_id=mailbox.id, pop3_enabled=True)

    assert accounts.authenticate_mailbox(session, **ok) is mailbox
    assert mailbox.last_login_at is not None


@pytest.mark.parametrize(
    ("pop3_enabled", "may_send", "pop3_ok", "submission_ok"),
    [
        (True, True, True, True),
        (False, True, False, True),  # POP3 off: still sends
        (True, False, True, False),  # sending off: still reads mail
        (False, False, False, False),
    ],
)
def test_each_door_checks_its_own_switch(
    session: Session, pop3_enabled: bool, may_send: bool, pop3_ok: bool, submission_ok: bool
) -> None:
    mailbox = make_mailbox(session, "user@hosted.example")
    mailbox.pop3_enabled, mailbox.may_send = pop3_enabled, may_send
    session.flush()
    ok = {"address": "user@hosted.example", "password": DEFAULT_PASSWORD}
    pop3 = accounts.authenticate_mailbox(session, **ok, door=accounts.DOOR_POP3)
    submission = accounts.authenticate_mailbox(session, **ok, door=accounts.DOOR_SUBMISSION)
    assert (pop3 is mailbox) is pop3_ok
    assert (submission is mailbox) is submission_ok
    with pytest.raises(ValueError, match="unknown door"):
        accounts.authenticate_mailbox(session, **ok, door="imap")


@pytest.mark.parametrize(
    "address",
    ["nobody@hosted.example", "user@elsewhere.example", "not an address", "", "a%b@hosted.example"],
)
def test_unknown_user_spends_one_dummy_verification(
    session: Session, address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unknown-user path runs the real dummy_verify (observed, not replaced)."""
    make_mailbox(session, "user@hosted.example")
    calls: list[str] = []
    real_dummy = passwords.dummy_verify

    def observed(password: str) -> None:
        calls.append(password)
        real_dummy(password)

    monkeypatch.setattr(accounts, "dummy_verify", observed)
    assert accounts.authenticate_mailbox(session, address=address, password="guess") is None
    assert calls == ["guess"]
    # A known user with a wrong password does a real verification instead, never both.
    calls.clear()
    assert (
        accounts.authenticate_mailbox(session, address="user@hosted.example", password="guess")
        is None
    )
    assert calls == []


# ------------------------------------------------------------------ operators
def test_operators(session: Session) -> None:
    admin = make_operator(session, "Admin")
    assert admin.username == "admin"
    with pytest.raises(ConflictError):
        make_operator(session, "ADMIN")
    for bad, field in [("", "username"), ("has space", "username"), ("x" * 65, "username")]:
        with pytest.raises(ValidationError) as info:
            make_operator(session, bad)
        assert info.value.field == field
    with pytest.raises(ValidationError) as info:
        make_operator(session, "bob", role="root")
    assert info.value.field == "role"
    with pytest.raises(ValidationError) as info:
        make_operator(session, "bob", password="short")
    assert info.value.field == "password"
    support = make_operator(session, "helpdesk", role="support")

    assert (
        accounts.authenticate_operator(session, username="ADMIN", password=DEFAULT_PASSWORD)
        is admin
    )
    assert admin.last_login_at is not None
    assert accounts.authenticate_operator(session, username="admin", password="wrong") is None
    assert accounts.authenticate_operator(session, username="ghost", password="x" * 8) is None
    support.active = False
    assert (
        accounts.authenticate_operator(session, username="helpdesk", password=DEFAULT_PASSWORD)
        is None
    )

    accounts.set_operator_password(
        session, actor=CLI_ACTOR, operator_id=admin.id, password="new admin password"
    )
    assert (
        accounts.authenticate_operator(session, username="admin", password="new admin password")
        is admin
    )
    with pytest.raises(ConflictError):
        accounts.delete_operator(session, actor=CLI_ACTOR, operator_id=admin.id)
    second = make_operator(session, "second")
    accounts.delete_operator(session, actor=CLI_ACTOR, operator_id=admin.id)
    assert [o.username for o in accounts.list_operators(session)] == ["helpdesk", "second"]
    with pytest.raises(NotFoundError):
        accounts.get_operator_by_username(session, username="admin")
    assert accounts.get_operator_by_username(session, username="Second") is second


def test_ensure_first_operator_only_once(session: Session) -> None:
    created = accounts.ensure_first_operator(session)
    assert created is not None
    operator, password = created
    assert operator.username == "admin" and operator.role == "admin"
    assert password not in operator.password_hash
    assert accounts.authenticate_operator(session, username="admin", password=password) is operator
    assert accounts.ensure_first_operator(session) is None
    detail = " ".join(filter(None, session.scalars(select(AuditEntry.detail)).all()))
    assert password not in detail


# ------------------------------------------------------------------ API tokens
def test_tokens_are_stored_hashed_and_revocable(session: Session) -> None:
    row, plaintext = accounts.create_token(
        session, actor=CLI_ACTOR, name="billing sync", scopes=["billing:read", "read", "read"]
    )
    assert plaintext.startswith(f"mh_{row.prefix}_")
    assert row.scope_list == ["billing:read", "read"]
    assert row.token_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    stored = session.execute(select(ApiToken.token_hash, ApiToken.prefix)).one()
    assert (
        plaintext not in stored and plaintext[len(f"mh_{row.prefix}_") :] not in stored.token_hash
    )
    assert row.owner == "cli"
    audit_text = " ".join(filter(None, session.scalars(select(AuditEntry.detail)).all()))
    assert plaintext[len(f"mh_{row.prefix}_") :] not in audit_text

    assert accounts.verify_token(session, token=plaintext) is row
    first_use = row.last_used_at
    assert first_use is not None
    accounts.verify_token(session, token=plaintext)
    assert row.last_used_at == first_use  # at most one write a minute

    secret = plaintext[len(f"mh_{row.prefix}_") :]
    tampered = plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B")
    for bad in [
        tampered,
        f"mh_{row.prefix}_" + secret[::-1],
        "mh_AAAAAAAAAAAA_" + secret,
        plaintext.upper(),
        "",
        "Bearer " + plaintext,
        "mh_" + row.prefix,
    ]:
        assert accounts.verify_token(session, token=bad) is None, bad

    accounts.revoke_token(session, actor=CLI_ACTOR, token_id=row.id)
    assert row.revoked_at is not None
    assert accounts.verify_token(session, token=plaintext) is None
    assert [t.id for t in accounts.list_tokens(session)] == [row.id]


def test_token_validation(session: Session) -> None:
    with pytest.raises(ValidationError) as info:
        accounts.create_token(session, actor=CLI_ACTOR, name="x", scopes=["admin"])
    assert info.value.field == "scopes"
    with pytest.raises(ValidationError):
        accounts.create_token(session, actor=CLI_ACTOR, name="x", scopes=[])
    with pytest.raises(ValidationError):
        accounts.create_token(session, actor=CLI_ACTOR, name=" ", scopes=["read"])
    with pytest.raises(NotFoundError):
        accounts.revoke_token(session, actor=CLI_ACTOR, token_id=12345)


def test_token_compare_is_constant_time(monkeypatch: pytest.MonkeyPatch, session: Session) -> None:
    """verify_token compares digests with hmac.compare_digest, also for unknown prefixes."""
    row, plaintext = accounts.create_token(session, actor=CLI_ACTOR, name="t", scopes=["read"])
    compared: list[tuple[str, str]] = []
    real = accounts.hmac.compare_digest

    def observed(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(accounts.hmac, "compare_digest", observed)
    accounts.verify_token(session, token=plaintext)
    accounts.verify_token(session, token="mh_ZZZZZZZZZZZZ_" + plaintext[len(f"mh_{row.prefix}_") :])
    assert len(compared) == 2
    assert compared[0][0] == row.token_hash


def test_a_new_operator_password_ends_every_portal_session(session) -> None:
    import datetime as dt

    from app.models import WebSession, utcnow
    from app.services import accounts
    from app.services.audit import CLI_ACTOR

    op = accounts.create_operator(
        session, actor=CLI_ACTOR, username="carol", password="first password", role="admin"
    )
    other = accounts.create_operator(
        session, actor=CLI_ACTOR, username="dave", password="first password", role="admin"
    )
    later = utcnow() + dt.timedelta(hours=1)
    for i, owner in enumerate((op, op, other)):
        session.add(
            WebSession(id_hash=f"h{i}", operator_id=owner.id, csrf_token="t", expires_at=later)
        )
    session.flush()
    accounts.set_operator_password(
        session, actor=CLI_ACTOR, operator_id=op.id, password="second password"
    )
    left = session.query(WebSession).all()
    assert [(s.id_hash, s.operator_id) for s in left] == [("h2", other.id)]
