"""Alias provisioning: clashes with mailboxes, target validation, updates, deletion."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.errors import ConflictError, NotFoundError, ValidationError
from app.models import Alias, AliasTarget, AuditEntry, Mailbox
from app.services import aliases, domains, mailboxes
from app.services.audit import CLI_ACTOR
from tests.factories import make_alias, make_customer, make_domain, make_mailbox


@pytest.fixture
def hosted(session: Session) -> Session:
    domain = make_domain(session, "hosted.example")
    # other.example belongs to the same customer (targets may cross its domains);
    # foreign.example to another customer.
    make_domain(session, "other.example", domain.customer)
    make_mailbox(session, "a@hosted.example")
    make_mailbox(session, "b@hosted.example")
    make_mailbox(session, "c@other.example")
    make_mailbox(session, "z@foreign.example")
    domains.add_domain_alias(
        session, actor=CLI_ACTOR, domain_id=domain.id, alias_name="alias.example"
    )
    return session


def test_create_alias_normalises_and_dedupes_targets(hosted: Session) -> None:
    alias = aliases.create_alias(
        hosted,
        actor=CLI_ACTOR,
        address="Sales@HOSTED.example",
        targets=["B@hosted.example", "a@hosted.example", "b@HOSTED.EXAMPLE", "c@other.example"],
    )
    assert alias.address == "sales@hosted.example"
    assert [t.address for t in alias.targets] == [
        "a@hosted.example",
        "b@hosted.example",
        "c@other.example",
    ]
    assert aliases.get_alias_by_address(hosted, address="SALES@hosted.example").id == alias.id
    entry = hosted.scalars(select(AuditEntry).where(AuditEntry.object_type == "alias")).one()
    assert entry.action == "alias.create"


@pytest.mark.parametrize(
    ("address", "targets", "error", "field"),
    [
        ("a@hosted.example", ["b@hosted.example"], ConflictError, "address"),
        ("A@Hosted.Example", ["b@hosted.example"], ConflictError, "address"),
        ("list@hosted.example", ["b@hosted.example"], ConflictError, "address"),
        ("new@nowhere.example", ["a@hosted.example"], NotFoundError, "domain"),
        ("new@alias.example", ["a@hosted.example"], NotFoundError, "domain"),
        ("bad address@hosted.example", ["a@hosted.example"], ValidationError, "address"),
        ("new@hosted.example", [], ValidationError, "targets"),
        ("new@hosted.example", ["nobody@hosted.example"], ValidationError, "targets"),
        ("new@hosted.example", ["x@gmail.example"], ValidationError, "targets"),
        ("new@hosted.example", ["not-an-address"], ValidationError, "targets"),
        ("new@hosted.example", ["new@hosted.example"], ValidationError, "targets"),
        ("new@hosted.example", ["a%b@hosted.example"], ValidationError, "targets"),
    ],
)
def test_create_alias_refuses(
    hosted: Session, address: str, targets: list[str], error: type[Exception], field: str
) -> None:
    make_alias(hosted, "list@hosted.example", ["a@hosted.example"])
    before = hosted.scalar(select(func.count(Alias.id)))
    with pytest.raises(error) as info:
        aliases.create_alias(hosted, actor=CLI_ACTOR, address=address, targets=targets)
    assert info.value.field == field  # type: ignore[attr-defined]
    assert hosted.scalar(select(func.count(Alias.id))) == before


def test_target_through_alias_domain_and_other_alias(hosted: Session) -> None:
    make_alias(hosted, "first@hosted.example", ["a@hosted.example"])
    alias = make_alias(hosted, "second@hosted.example", ["first@hosted.example", "b@alias.example"])
    assert [t.address for t in alias.targets] == ["b@alias.example", "first@hosted.example"]


def test_set_targets_and_delete(hosted: Session) -> None:
    alias = make_alias(hosted, "list@hosted.example", ["a@hosted.example", "b@hosted.example"])
    aliases.set_alias_targets(
        hosted, actor=CLI_ACTOR, alias_id=alias.id, targets=["b@hosted.example", "c@other.example"]
    )
    hosted.flush()
    assert sorted(t.address for t in alias.targets) == ["b@hosted.example", "c@other.example"]
    with pytest.raises(ValidationError):
        aliases.set_alias_targets(hosted, actor=CLI_ACTOR, alias_id=alias.id, targets=[])
    with pytest.raises(ValidationError):
        aliases.set_alias_targets(
            hosted, actor=CLI_ACTOR, alias_id=alias.id, targets=["list@hosted.example"]
        )
    listed = aliases.list_aliases(hosted, search="LIST@")
    assert [a.id for a in listed] == [alias.id]
    aliases.delete_alias(hosted, actor=CLI_ACTOR, alias_id=alias.id)
    assert hosted.scalar(select(func.count(AliasTarget.id))) == 0
    with pytest.raises(NotFoundError):
        aliases.get_alias(hosted, alias_id=alias.id)
    actions = hosted.scalars(
        select(AuditEntry.action).where(AuditEntry.object_type == "alias").order_by(AuditEntry.id)
    ).all()
    assert actions == ["alias.create", "alias.update", "alias.delete"]
    # The address is free again, even for a mailbox.
    make_mailbox(hosted, "list@hosted.example")


def test_list_aliases_by_domain_and_page(hosted: Session) -> None:
    ids = [make_alias(hosted, f"l{i}@hosted.example", ["a@hosted.example"]).id for i in range(4)]
    other = make_alias(hosted, "x@foreign.example", ["z@foreign.example"]).id
    domain = domains.get_domain_by_name(hosted, name="hosted.example")
    assert [a.id for a in aliases.list_aliases(hosted, domain_id=domain.id)] == ids
    assert [a.id for a in aliases.list_aliases(hosted, after_id=ids[2])] == [ids[3], other]
    assert [a.id for a in aliases.list_aliases(hosted, customer_id=domain.customer_id)] == ids


# ------------------------------------------------------------------ cross-customer isolation
def _two_customers(session: Session) -> dict[str, int]:
    """Acme (acme.example, acme2.example, alias domain acme-alias.example) and Beta
    (beta.example, alias domain beta-alias.example), each with a mailbox and an alias."""
    acme = make_customer(session, "Acme")
    beta = make_customer(session, "Beta")
    acme_domain = make_domain(session, "acme.example", acme)
    make_domain(session, "acme2.example", acme)
    beta_domain = make_domain(session, "beta.example", beta)
    for address in ("alice@acme.example", "carol@acme2.example", "bob@beta.example"):
        make_mailbox(session, address)
    make_alias(session, "team@acme.example", ["alice@acme.example"])
    make_alias(session, "sales@beta.example", ["bob@beta.example"])
    for domain, name in ((acme_domain, "acme-alias.example"), (beta_domain, "beta-alias.example")):
        domains.add_domain_alias(session, actor=CLI_ACTOR, domain_id=domain.id, alias_name=name)
    existing = make_alias(session, "existing@acme.example", ["alice@acme.example"])
    return {"acme_domain": acme_domain.id, "existing": existing.id}


def _create(session: Session, ids: dict[str, int], target: str) -> None:
    aliases.create_alias(session, actor=CLI_ACTOR, address="new@acme.example", targets=[target])


def _set_targets(session: Session, ids: dict[str, int], target: str) -> None:
    aliases.set_alias_targets(
        session, actor=CLI_ACTOR, alias_id=ids["existing"], targets=["alice@acme.example", target]
    )


def _catchall(session: Session, ids: dict[str, int], target: str) -> None:
    domains.set_catchall(session, actor=CLI_ACTOR, domain_id=ids["acme_domain"], target=target)


OPERATIONS = {"create": (_create, "targets"), "set": (_set_targets, "targets"),
              "catchall": (_catchall, "target")}  # fmt: skip
FOREIGN = "is not a mailbox or alias of this customer's domains"
TARGET_ROWS = [
    # (operation, target, allowed): every door of the service layer, own and foreign targets.
    *[(op, "bob@beta.example", False) for op in OPERATIONS],  # another customer's mailbox
    *[(op, "sales@beta.example", False) for op in OPERATIONS],  # another customer's alias
    *[(op, "BOB@Beta-Alias.example", False) for op in OPERATIONS],  # ... via its alias domain
    *[(op, "nobody@beta.example", False) for op in OPERATIONS],  # foreign, does not exist
    *[(op, "nobody@nowhere.example", False) for op in OPERATIONS],  # not hosted at all
    *[(op, "nobody@acme.example", False) for op in OPERATIONS],  # own domain, no such address
    *[(op, "carol@acme2.example", True) for op in OPERATIONS],  # own other domain
    *[(op, "alice@acme-alias.example", True) for op in OPERATIONS],  # own alias domain
    *[(op, "team@acme.example", True) for op in OPERATIONS],  # own alias
]


@pytest.mark.parametrize(("operation", "target", "allowed"), TARGET_ROWS)
def test_targets_must_belong_to_the_same_customer(
    session: Session, operation: str, target: str, allowed: bool
) -> None:
    ids = _two_customers(session)
    run, field = OPERATIONS[operation]
    before = (
        session.scalars(select(AliasTarget.address).order_by(AliasTarget.id)).all(),
        session.scalar(select(func.count(AuditEntry.id))),
    )
    if allowed:
        run(session, ids, target)
        session.flush()
        delivered_to = {
            *session.scalars(select(AliasTarget.address)),
            domains.get_domain(session, domain_id=ids["acme_domain"]).catchall_target,
        }
        assert target in delivered_to
        return
    with pytest.raises(ValidationError) as info:
        run(session, ids, target)
    normalised = target.lower()
    # The same words whether the foreign address exists or not: no probing other customers.
    assert info.value.field == field
    assert info.value.message.endswith(f"{normalised} {FOREIGN}"), info.value.message
    after = (
        session.scalars(select(AliasTarget.address).order_by(AliasTarget.id)).all(),
        session.scalar(select(func.count(AuditEntry.id))),
    )
    assert after == before
    assert domains.get_domain(session, domain_id=ids["acme_domain"]).catchall_target is None


def test_target_added_while_its_mailbox_is_deleted_does_not_dangle(
    session_factory: sessionmaker[Session],
) -> None:
    """Transaction A adds an alias targeting bob while transaction B deletes bob. Whatever the
    interleaving, no committed target may name an address that no longer exists. On
    PostgreSQL the target check's row lock makes B wait for A (B's cleanup then removes A's
    target); on SQLite B either waits for A's write lock or fails and rolls back."""
    with transaction(session_factory) as s:
        make_domain(s, "hosted.example")
        bob = make_mailbox(s, "bob@hosted.example").id
        make_mailbox(s, "carol@hosted.example")
    outcome: list[BaseException | None] = []

    def delete_bob() -> None:
        try:
            with transaction(session_factory) as s:
                mailboxes.delete_mailbox(s, actor=CLI_ACTOR, mailbox_id=bob)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome.append(exc)

    with transaction(session_factory) as a:
        make_alias(a, "team@hosted.example", ["bob@hosted.example"])
        deleter = threading.Thread(target=delete_bob, daemon=True)
        deleter.start()
        deleter.join(timeout=0.5)  # give B time to reach its DELETE (and wait there)
    deleter.join(timeout=30)
    assert not deleter.is_alive() and len(outcome) == 1
    with session_factory() as s:
        bob_exists = s.get(Mailbox, bob) is not None
        targets = s.scalars(select(AliasTarget.address)).all()
        if outcome[0] is None:
            assert not bob_exists
            assert targets == []
            assert s.scalar(select(func.count(Alias.id))) == 0  # its last target went
        else:
            assert bob_exists, outcome[0]  # B failed and rolled back: nothing dangles
            assert targets == ["bob@hosted.example"]
