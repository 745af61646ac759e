"""Recipient resolution, Postfix smtpd_check style: an input column and the exact verdict."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.maildir import MailboxRef, MaildirStore
from app.passwords import hash_password
from app.services import aliases, customers, domains, mailboxes
from app.services.audit import CLI_ACTOR
from app.services.resolution import Verdict, existing_mailbox_ids, resolve_recipient
from tests.factories import make_alias, make_customer, make_domain, make_mailbox

OK = Verdict.OK
INVALID = Verdict.INVALID_ADDRESS
NO_DOMAIN = Verdict.UNKNOWN_DOMAIN
NO_USER = Verdict.UNKNOWN_USER
SUSPENDED = Verdict.SUSPENDED
FULL = Verdict.OVER_QUOTA
NO_PM = Verdict.NO_POSTMASTER
# The platform postmaster of the world below (Settings.postmaster_address in production).
PLATFORM_PM = "hostmaster@isp.example"


@functools.cache
def _hash() -> str:
    # One real argon2 hash shared by every mailbox of the world: resolution never checks it.
    return hash_password("correct horse")


def _mailbox(session: Session, address: str, *, quota: int | None = None) -> int:
    return make_mailbox(session, address, password_hash=_hash(), quota=quota).id


def build_world(session: Session) -> None:
    acme = make_customer(session, "Acme")
    hosted = make_domain(session, "hosted.example", acme)
    for local in ("user", "bob", "carol", "dave"):
        _mailbox(session, f"{local}@hosted.example")
    carol = mailboxes.get_mailbox_by_address(session, address="carol@hosted.example")
    mailboxes.set_mailbox_status(session, actor=CLI_ACTOR, mailbox_id=carol.id, status="suspended")
    make_alias(session, "team@hosted.example", ["user@hosted.example", "bob@hosted.example"])
    make_alias(session, "chain@hosted.example", ["team@hosted.example"])
    make_alias(session, "dup@hosted.example", ["team@hosted.example", "user@hosted.example"])
    make_alias(session, "to-carol@hosted.example", ["carol@hosted.example"])
    make_alias(session, "mixed@hosted.example", ["carol@hosted.example", "dave@hosted.example"])
    # A loop with no way out, and a loop with one mailbox on the way.
    loop1 = make_alias(session, "loop1@hosted.example", ["user@hosted.example"])
    make_alias(session, "loop2@hosted.example", ["loop1@hosted.example"])
    aliases.set_alias_targets(
        session, actor=CLI_ACTOR, alias_id=loop1.id, targets=["loop2@hosted.example"]
    )
    make_alias(session, "ring1@hosted.example", ["bob@hosted.example"])
    ring1 = aliases.get_alias_by_address(session, address="ring1@hosted.example")
    make_alias(session, "ring2@hosted.example", ["ring1@hosted.example", "dave@hosted.example"])
    aliases.set_alias_targets(
        session,
        actor=CLI_ACTOR,
        alias_id=ring1.id,
        targets=["ring2@hosted.example", "bob@hosted.example"],
    )
    # Chains of 10 and 11 aliases in front of user@: depth 10 is the last one followed.
    previous = "user@hosted.example"
    for i in range(11, 0, -1):
        make_alias(session, f"deep{i}@hosted.example", [previous])
        previous = f"deep{i}@hosted.example"
    # A dangling target (mailbox deleted after the alias was made) is ignored.
    gone = _mailbox(session, "gone@hosted.example")
    make_alias(session, "half@hosted.example", ["gone@hosted.example", "bob@hosted.example"])
    make_alias(session, "stale@hosted.example", ["gone@hosted.example"])
    mailboxes.delete_mailbox(session, actor=CLI_ACTOR, mailbox_id=gone)
    domains.add_domain_alias(
        session, actor=CLI_ACTOR, domain_id=hosted.id, alias_name="alias.example"
    )

    catch = make_domain(session, "catchall.example", acme)
    _mailbox(session, "catch@catchall.example")
    _mailbox(session, "named@catchall.example")
    domains.set_catchall(
        session, actor=CLI_ACTOR, domain_id=catch.id, target="catch@catchall.example"
    )
    via_alias = make_domain(session, "catch-alias.example", acme)
    make_alias(session, "all@catch-alias.example", ["team@hosted.example"])
    domains.set_catchall(
        session, actor=CLI_ACTOR, domain_id=via_alias.id, target="all@catch-alias.example"
    )

    make_domain(session, "pm.example", acme)
    _mailbox(session, "first@pm.example")
    _mailbox(session, "second@pm.example")
    make_domain(session, "pmbox.example", acme)
    _mailbox(session, "someone@pmbox.example")
    _mailbox(session, "postmaster@pmbox.example")
    make_domain(session, "empty.example", acme)
    make_domain(session, "dormant.example", acme)
    sleeper = _mailbox(session, "sleeper@dormant.example")
    mailboxes.set_mailbox_status(session, actor=CLI_ACTOR, mailbox_id=sleeper, status="suspended")
    make_domain(session, "isp.example", acme)
    _mailbox(session, PLATFORM_PM)
    make_alias(session, "pm-team@isp.example", [PLATFORM_PM, "user@hosted.example"])
    make_domain(session, "bücher.example", acme)
    _mailbox(session, "leser@bücher.example")

    susp_domain = make_domain(session, "susp.example", acme)
    _mailbox(session, "u@susp.example")
    make_alias(session, "cross@hosted.example", ["u@susp.example", "user@hosted.example"])
    domains.set_domain_status(
        session, actor=CLI_ACTOR, domain_id=susp_domain.id, status="suspended"
    )

    late = make_customer(session, "Late Payer")
    make_domain(session, "late.example", late)
    _mailbox(session, "u@late.example")
    customers.set_customer_status(session, actor=CLI_ACTOR, customer_id=late.id, status="suspended")
    session.commit()


ROWS: list[tuple[str, Verdict, tuple[str, ...]]] = [
    # plain mailbox, any case (RFC 5321 2.4: domains are case-insensitive; we fold local too)
    ("user@hosted.example", OK, ("user@hosted.example",)),
    ("USER@HOSTED.EXAMPLE", OK, ("user@hosted.example",)),
    ("User@Hosted.Example", OK, ("user@hosted.example",)),
    ("  user@hosted.example  ", OK, ("user@hosted.example",)),
    # aliases
    ("team@hosted.example", OK, ("bob@hosted.example", "user@hosted.example")),
    ("chain@hosted.example", OK, ("bob@hosted.example", "user@hosted.example")),
    ("dup@hosted.example", OK, ("bob@hosted.example", "user@hosted.example")),
    ("loop1@hosted.example", NO_USER, ()),
    ("loop2@hosted.example", NO_USER, ()),
    ("ring1@hosted.example", OK, ("bob@hosted.example", "dave@hosted.example")),
    ("ring2@hosted.example", OK, ("bob@hosted.example", "dave@hosted.example")),
    ("deep2@hosted.example", OK, ("user@hosted.example",)),
    ("deep1@hosted.example", NO_USER, ()),  # 11 aliases deep: beyond the limit
    ("half@hosted.example", OK, ("bob@hosted.example",)),
    ("stale@hosted.example", NO_USER, ()),
    ("gone@hosted.example", NO_USER, ()),
    # domain alias: same users, mail lands in the real domain's mailboxes
    ("user@alias.example", OK, ("user@hosted.example",)),
    ("Team@ALIAS.example", OK, ("bob@hosted.example", "user@hosted.example")),
    ("nobody@alias.example", NO_USER, ()),
    ("postmaster@alias.example", OK, ("user@hosted.example",)),
    # catch-all
    ("anything@catchall.example", OK, ("catch@catchall.example",)),
    ("named@catchall.example", OK, ("named@catchall.example",)),
    ("x@catch-alias.example", OK, ("bob@hosted.example", "user@hosted.example")),
    # postmaster (RFC 5321 4.5.1): own mailbox, else catch-all, else the first mailbox
    ("postmaster@pmbox.example", OK, ("postmaster@pmbox.example",)),
    ("Postmaster@PM.example", OK, ("first@pm.example",)),
    ("postmaster@catchall.example", OK, ("catch@catchall.example",)),
    ("postmaster@hosted.example", OK, ("user@hosted.example",)),
    # ... and nothing else without a platform postmaster (see POSTMASTER_ROWS for one)
    ("postmaster@empty.example", NO_PM, ()),
    ("postmaster@dormant.example", NO_PM, ()),  # its only mailbox is suspended
    ("Postmaster", NO_PM, ()),  # RFC 5321 4.1.1.3: <Postmaster> without a domain
    ("nobody@empty.example", NO_USER, ()),
    # internationalised domain names, Unicode or punycode
    ("leser@bücher.example", OK, ("leser@xn--bcher-kva.example",)),
    ("LESER@BÜCHER.EXAMPLE", OK, ("leser@xn--bcher-kva.example",)),
    ("leser@xn--bcher-kva.example", OK, ("leser@xn--bcher-kva.example",)),
    # suspension: mailbox, domain, customer
    ("carol@hosted.example", SUSPENDED, ()),
    ("to-carol@hosted.example", SUSPENDED, ()),
    ("mixed@hosted.example", OK, ("dave@hosted.example",)),
    ("u@susp.example", SUSPENDED, ()),
    ("postmaster@susp.example", SUSPENDED, ()),
    ("cross@hosted.example", OK, ("user@hosted.example",)),
    ("u@late.example", SUSPENDED, ()),
    ("nobody@late.example", SUSPENDED, ()),
    # unknown
    ("nobody@hosted.example", NO_USER, ()),
    ("user@nowhere.example", NO_DOMAIN, ()),
    ("user@sub.hosted.example", NO_DOMAIN, ()),
    # not an address we could host (source routes, quoting, literals, junk)
    ("user%foreign.example@hosted.example", INVALID, ()),
    ("foreign.example!user@hosted.example", INVALID, ()),
    ('"user"@hosted.example', INVALID, ()),
    ('"us er"@hosted.example', INVALID, ()),
    ("user@[192.0.2.1]", INVALID, ()),
    ("user@[IPv6:2001:db8::1]", INVALID, ()),
    ("@hosted.example:user@hosted.example", INVALID, ()),
    ("user@hosted.example.", INVALID, ()),
    ("user", INVALID, ()),
    ("", INVALID, ()),
    ("user@@hosted.example", INVALID, ()),
    (".user@hosted.example", INVALID, ()),
    ("us..er@hosted.example", INVALID, ()),
    ("../etc@hosted.example", INVALID, ()),
    # RFC 5321 Dot-strings our mailbox grammar refuses ("/"): unknown user, never a relay.
    ("us/er@hosted.example", NO_USER, ()),
    ("us/er@foreign.example", INVALID, ()),
    ("user\x00@hosted.example", INVALID, ()),
    ("a" * 65 + "@hosted.example", INVALID, ()),
]


# RFC 5321 section 4.5.1 with a platform postmaster configured: (address, postmaster_address,
# verdict, targets). The domain's own choices come first; the platform postmaster is the last
# resort, and a platform postmaster that is not a deliverable hosted address counts as none.
POSTMASTER_ROWS: list[tuple[str, str | None, Verdict, tuple[str, ...]]] = [
    ("postmaster@empty.example", PLATFORM_PM, OK, (PLATFORM_PM,)),
    ("POSTMASTER@EMPTY.EXAMPLE", PLATFORM_PM, OK, (PLATFORM_PM,)),
    ("postmaster@dormant.example", PLATFORM_PM, OK, (PLATFORM_PM,)),
    ("Postmaster", PLATFORM_PM, OK, (PLATFORM_PM,)),
    ("postmaster", PLATFORM_PM, OK, (PLATFORM_PM,)),
    ("POSTMASTER", PLATFORM_PM, OK, (PLATFORM_PM,)),
    ("postmaster", None, NO_PM, ()),
    ("postmaster", "", NO_PM, ()),
    # the domain's own postmaster, catch-all or first mailbox still win
    ("postmaster@pmbox.example", PLATFORM_PM, OK, ("postmaster@pmbox.example",)),
    ("Postmaster@PM.example", PLATFORM_PM, OK, ("first@pm.example",)),
    ("postmaster@catchall.example", PLATFORM_PM, OK, ("catch@catchall.example",)),
    ("postmaster@alias.example", PLATFORM_PM, OK, ("user@hosted.example",)),
    # only postmaster falls back; suspension and unknown domains are not overridden
    ("nobody@empty.example", PLATFORM_PM, NO_USER, ()),
    ("postmaster@susp.example", PLATFORM_PM, SUSPENDED, ()),
    ("postmaster@late.example", PLATFORM_PM, SUSPENDED, ()),
    ("postmaster@nowhere.example", PLATFORM_PM, NO_DOMAIN, ()),
    ("postmaster@", PLATFORM_PM, INVALID, ()),
    # the platform postmaster may be an alias
    ("Postmaster", "pm-team@isp.example", OK, (PLATFORM_PM, "user@hosted.example")),
    # misconfigured platform postmaster: no such user, not hosted, suspended, or itself a
    # postmaster with nowhere to go (no loop)
    ("postmaster@empty.example", "nobody@isp.example", NO_PM, ()),
    ("postmaster@empty.example", "pm@foreign.example", NO_PM, ()),
    ("postmaster@empty.example", "carol@hosted.example", NO_PM, ()),
    ("postmaster@empty.example", "postmaster@empty.example", NO_PM, ()),
    ("Postmaster", "Postmaster", NO_PM, ()),
]


@pytest.fixture
def world(session: Session) -> Iterator[Session]:
    build_world(session)
    yield session


def test_resolution_table(world: Session) -> None:
    failures = []
    for address, verdict, targets in ROWS:
        result = resolve_recipient(world, address=address)
        got = (result.verdict, tuple(sorted(t.address for t in result.targets)))
        if got != (verdict, targets):
            failures.append(f"{address!r}: expected {(verdict, targets)}, got {got}")
    assert not failures, "\n".join(failures)
    assert len(ROWS) > 50


def test_postmaster_table(world: Session) -> None:
    failures = []
    for address, platform, verdict, targets in POSTMASTER_ROWS:
        result = resolve_recipient(world, address=address, postmaster_address=platform)
        got = (result.verdict, tuple(sorted(t.address for t in result.targets)))
        if got != (verdict, targets):
            failures.append(f"{address!r} ({platform}): expected {(verdict, targets)}, got {got}")
    assert not failures, "\n".join(failures)


def test_platform_postmaster_over_quota_is_temporary(session: Session, store: MaildirStore) -> None:
    make_domain(session, "empty.example")
    make_domain(session, "isp.example")
    _mailbox(session, PLATFORM_PM, quota=1000)
    session.commit()
    _fill(store, MailboxRef("isp.example", "hostmaster"), 1000)
    for address in ("Postmaster", "postmaster@empty.example"):
        result = resolve_recipient(
            session, address=address, store=store, postmaster_address=PLATFORM_PM
        )
        assert result.verdict is FULL, address


def test_existing_mailbox_ids(session: Session, engine: Engine) -> None:
    make_domain(session, "hosted.example")
    kept = _mailbox(session, "kept@hosted.example")
    gone = _mailbox(session, "gone@hosted.example")
    mailboxes.delete_mailbox(session, actor=CLI_ACTOR, mailbox_id=gone)
    again = _mailbox(session, "gone@hosted.example")
    session.commit()
    # A mailbox created again at a deleted one's address gets a new id (never reused).
    assert again not in (kept, gone)
    assert existing_mailbox_ids(session, ids=[kept, gone, again, kept]) == {kept, again}
    assert existing_mailbox_ids(session, ids=[gone]) == set()
    assert existing_mailbox_ids(session, ids=[]) == set()
    # The SMTP edge passes a Core connection (cheaper); same answers on both backends.
    with engine.connect() as connection:
        assert existing_mailbox_ids(connection, ids=[again, gone, kept]) == {kept, again}
        assert existing_mailbox_ids(connection, ids=[gone, gone]) == set()
        many = list(range(1, 70))  # more ids than mailboxes: one parameter each
        assert existing_mailbox_ids(connection, ids=many) == {kept, again}


def test_targets_carry_mailbox_ref_and_quota(world: Session) -> None:
    result = resolve_recipient(world, address="TEAM@alias.example")
    by_address = {t.address: t for t in result.targets}
    user = mailboxes.get_mailbox_by_address(world, address="user@hosted.example")
    target = by_address["user@hosted.example"]
    assert target.mailbox_id == user.id
    assert target.ref == MailboxRef("hosted.example", "user")
    assert target.quota_bytes == user.quota_bytes
    assert result.ok


def test_resolving_a_plain_mailbox_takes_one_query(world: Session, engine: Engine) -> None:
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", count)
    try:
        assert resolve_recipient(world, address="user@hosted.example").ok
        plain = len(statements)
        statements.clear()
        assert resolve_recipient(world, address="chain@alias.example").ok
        chained = len(statements)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert plain == 1, statements
    # the direct probe, alias domain (2 lookups) + 3 levels of (mailboxes, aliases)
    assert chained <= 9


def _fill(store: MaildirStore, ref: MailboxRef, size: int) -> None:
    store.deliver([(ref, [b"x" * (size - 1) + b"\n"])])


def test_over_quota_with_the_store(session: Session, store: MaildirStore) -> None:
    make_domain(session, "hosted.example")
    _mailbox(session, "full@hosted.example", quota=1000)
    _mailbox(session, "room@hosted.example", quota=1000)
    _mailbox(session, "unlimited@hosted.example", quota=0)
    make_alias(session, "both@hosted.example", ["full@hosted.example", "room@hosted.example"])
    make_alias(session, "onlyfull@hosted.example", ["full@hosted.example"])
    session.commit()
    _fill(store, MailboxRef("hosted.example", "full"), 1000)
    _fill(store, MailboxRef("hosted.example", "room"), 999)
    _fill(store, MailboxRef("hosted.example", "unlimited"), 5000)

    rows = [
        ("full@hosted.example", FULL, ()),
        ("onlyfull@hosted.example", FULL, ()),
        ("both@hosted.example", OK, ("room@hosted.example",)),
        ("room@hosted.example", OK, ("room@hosted.example",)),
        ("unlimited@hosted.example", OK, ("unlimited@hosted.example",)),
        ("nobody@hosted.example", NO_USER, ()),
    ]
    for address, verdict, targets in rows:
        result = resolve_recipient(session, address=address, store=store)
        assert (result.verdict, tuple(t.address for t in result.targets)) == (verdict, targets), (
            address
        )
    # Without the store the quota is not checked (the SMTP edge decides when to pass it).
    assert resolve_recipient(session, address="full@hosted.example").ok


def test_resume_makes_mail_deliverable_again(session: Session) -> None:
    customer = make_customer(session, "Flaky")
    domain = make_domain(session, "flaky.example", customer)
    _mailbox(session, "u@flaky.example")
    customers.set_customer_status(
        session, actor=CLI_ACTOR, customer_id=customer.id, status="suspended"
    )
    assert resolve_recipient(session, address="u@flaky.example").verdict is SUSPENDED
    customers.set_customer_status(
        session, actor=CLI_ACTOR, customer_id=customer.id, status="active"
    )
    domains.set_domain_status(session, actor=CLI_ACTOR, domain_id=domain.id, status="suspended")
    assert resolve_recipient(session, address="u@flaky.example").verdict is SUSPENDED
    domains.set_domain_status(session, actor=CLI_ACTOR, domain_id=domain.id, status="active")
    assert resolve_recipient(session, address="u@flaky.example").ok


def test_only_catch_all_deliveries_are_marked_multidrop(world: Session) -> None:
    """The SMTP edge keeps one copy per envelope recipient for targets reached through the
    catch-all (also through a catch-all that is an alias, and for postmaster@), and merges
    the rest per mailbox."""
    rows = [
        ("anything@catchall.example", True),
        ("x@catch-alias.example", True),
        ("postmaster@catchall.example", True),
        ("named@catchall.example", False),
        ("team@hosted.example", False),
        ("postmaster@pm.example", False),  # the first-mailbox fallback is no catch-all
    ]
    got = [
        (address, {t.via_catchall for t in resolve_recipient(world, address=address).targets})
        for address, _ in rows
    ]
    assert got == [(address, {flag}) for address, flag in rows]
