"""Domain provisioning: IDNA names, uniqueness with alias domains, limits, catch-all, deletion."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.errors import ConflictError, LimitExceededError, NotFoundError, ValidationError
from app.models import Alias, AliasTarget, AuditEntry, Domain, DomainAlias, LifecycleEvent, Mailbox
from app.services import aliases, customers, domains, mailboxes
from app.services.audit import CLI_ACTOR
from app.services.resolution import resolve_recipient
from tests.factories import make_alias, make_customer, make_domain, make_mailbox


def _events(session: Session) -> list[tuple[str, str, str | None]]:
    return [
        (e.entity, e.action, e.address)
        for e in session.scalars(select(LifecycleEvent).order_by(LifecycleEvent.id))
    ]


def test_create_domain_normalises_and_records_creation(session: Session) -> None:
    customer = make_customer(session, "Acme")
    domain = domains.create_domain(
        session, actor=CLI_ACTOR, customer_id=customer.id, name="  BÜCHER.Example "
    )
    assert domain.name == "xn--bcher-kva.example"
    assert domain.default_quota_bytes == 1024**3
    assert domains.get_domain_by_name(session, name="bücher.EXAMPLE").id == domain.id
    assert _events(session) == [("domain", "created", None)]
    event = session.scalars(select(LifecycleEvent)).one()
    assert (event.customer_id, event.domain_name, event.entity_id) == (
        customer.id,
        "xn--bcher-kva.example",
        domain.id,
    )
    assert session.scalars(select(AuditEntry.action)).all() == [
        "customer.create",
        "domain.create",
    ]


@pytest.mark.parametrize(
    "name",
    [
        "",
        "localhost",
        "example.",
        "[192.0.2.1]",
        "192.0.2.1",
        "a..example",
        "-bad.example",
        "bad-.example",
        "under_score.example",
        "sp ace.example",
        "a/b.example",
        "x" * 64 + ".example",
        ("a" * 60 + ".") * 5 + "example",
    ],
)
def test_invalid_domain_names_are_refused(session: Session, name: str) -> None:
    customer = make_customer(session, "Acme")
    with pytest.raises(ValidationError) as info:
        domains.create_domain(session, actor=CLI_ACTOR, customer_id=customer.id, name=name)
    assert info.value.field == "name"
    assert session.scalar(select(func.count(Domain.id))) == 0


def test_domain_and_alias_domain_names_are_one_namespace(session: Session) -> None:
    customer = make_customer(session, "Acme")
    main = make_domain(session, "main.example", customer)
    domains.add_domain_alias(
        session, actor=CLI_ACTOR, domain_id=main.id, alias_name="Other.Example"
    )
    with pytest.raises(ConflictError) as info:
        domains.create_domain(
            session, actor=CLI_ACTOR, customer_id=customer.id, name="other.example"
        )
    assert "alias domain" in info.value.message
    with pytest.raises(ConflictError):
        domains.create_domain(
            session, actor=CLI_ACTOR, customer_id=customer.id, name="MAIN.example"
        )
    with pytest.raises(ConflictError):
        domains.add_domain_alias(
            session, actor=CLI_ACTOR, domain_id=main.id, alias_name="main.example"
        )
    with pytest.raises(ConflictError):
        domains.add_domain_alias(
            session, actor=CLI_ACTOR, domain_id=main.id, alias_name="other.example"
        )
    with pytest.raises(NotFoundError):
        domains.create_domain(session, actor=CLI_ACTOR, customer_id=9999, name="new.example")
    domains.remove_domain_alias(session, actor=CLI_ACTOR, alias_name="OTHER.example")
    assert session.scalar(select(func.count(DomainAlias.id))) == 0
    with pytest.raises(NotFoundError):
        domains.remove_domain_alias(session, actor=CLI_ACTOR, alias_name="other.example")


def test_limits_cannot_go_below_current_use(session: Session) -> None:
    domain = make_domain(session, "hosted.example", default_quota_bytes=100)
    make_mailbox(session, "a@hosted.example")
    make_mailbox(session, "b@hosted.example", quota=300)
    with pytest.raises(LimitExceededError) as info:
        domains.update_domain(session, actor=CLI_ACTOR, domain_id=domain.id, max_mailboxes=1)
    assert info.value.field == "max_mailboxes"
    with pytest.raises(LimitExceededError) as info:
        domains.update_domain(session, actor=CLI_ACTOR, domain_id=domain.id, total_quota_bytes=399)
    assert info.value.field == "total_quota_bytes"
    with pytest.raises(ValidationError):
        domains.update_domain(session, actor=CLI_ACTOR, domain_id=domain.id, max_mailboxes=-1)
    domains.update_domain(
        session, actor=CLI_ACTOR, domain_id=domain.id, max_mailboxes=2, total_quota_bytes=400
    )
    assert (domain.max_mailboxes, domain.total_quota_bytes) == (2, 400)
    domains.update_domain(
        session,
        actor=CLI_ACTOR,
        domain_id=domain.id,
        clear_max_mailboxes=True,
        clear_total_quota=True,
        default_quota_bytes=5,
    )
    assert (domain.max_mailboxes, domain.total_quota_bytes, domain.default_quota_bytes) == (
        None,
        None,
        5,
    )


def test_status_changes_record_events_only_when_changed(session: Session) -> None:
    domain = make_domain(session, "hosted.example")
    for status in ("suspended", "suspended", "active", "active"):
        domains.set_domain_status(session, actor=CLI_ACTOR, domain_id=domain.id, status=status)
    with pytest.raises(ValidationError):
        domains.set_domain_status(session, actor=CLI_ACTOR, domain_id=domain.id, status="paused")
    assert _events(session) == [
        ("domain", "created", None),
        ("domain", "suspended", None),
        ("domain", "resumed", None),
    ]


def test_catchall_must_be_hosted_and_can_be_cleared(session: Session) -> None:
    domain = make_domain(session, "hosted.example")
    make_mailbox(session, "inbox@hosted.example")
    with pytest.raises(ValidationError) as info:
        domains.set_catchall(
            session, actor=CLI_ACTOR, domain_id=domain.id, target="nobody@hosted.example"
        )
    assert info.value.field == "target"
    with pytest.raises(ValidationError):
        domains.set_catchall(session, actor=CLI_ACTOR, domain_id=domain.id, target="not an address")
    domains.set_catchall(
        session, actor=CLI_ACTOR, domain_id=domain.id, target="INBOX@hosted.example"
    )
    assert domain.catchall_target == "inbox@hosted.example"
    domains.set_catchall(session, actor=CLI_ACTOR, domain_id=domain.id, target=None)
    assert domain.catchall_target is None


def test_list_domains_filters(session: Session) -> None:
    acme = make_customer(session, "Acme")
    other = make_customer(session, "Other")
    a = make_domain(session, "alpha.example", acme)
    b = make_domain(session, "bücher.example", acme)
    c = make_domain(session, "gamma.example", other)
    assert [d.id for d in domains.list_domains(session, customer_id=acme.id)] == [a.id, b.id]
    assert [d.id for d in domains.list_domains(session, search="BÜCHER.example")] == [b.id]
    assert [d.id for d in domains.list_domains(session, search="amm")] == [c.id]
    assert [d.id for d in domains.list_domains(session, after_id=a.id, limit=1)] == [b.id]


def test_delete_domain_refused_with_content_then_cascades(
    session_factory: sessionmaker[Session],
) -> None:
    with transaction(session_factory) as s:
        domain_id = make_domain(s, "hosted.example").id
        make_mailbox(s, "a@hosted.example")
        make_mailbox(s, "b@hosted.example")
        make_alias(s, "both@hosted.example", ["a@hosted.example", "b@hosted.example"])
        domains.add_domain_alias(
            s, actor=CLI_ACTOR, domain_id=domain_id, alias_name="alias.example"
        )
    with pytest.raises(ConflictError), transaction(session_factory) as s:
        domains.delete_domain(s, actor=CLI_ACTOR, domain_id=domain_id)
    with transaction(session_factory) as s:
        domains.delete_domain(s, actor=CLI_ACTOR, domain_id=domain_id, cascade=True)
    with session_factory() as s:
        assert s.scalar(select(func.count(Domain.id))) == 0
        assert s.scalar(select(func.count(Mailbox.id))) == 0
        assert s.scalar(select(func.count(DomainAlias.id))) == 0
        assert _events(s)[-3:] == [
            ("mailbox", "deleted", "a@hosted.example"),
            ("mailbox", "deleted", "b@hosted.example"),
            ("domain", "deleted", None),
        ]
        # The name is free again.
        make_domain(s, "hosted.example")


def test_empty_domain_deletes_without_cascade(session: Session) -> None:
    domain = make_domain(session, "hosted.example")
    domains.delete_domain(session, actor=CLI_ACTOR, domain_id=domain.id)
    with pytest.raises(NotFoundError):
        domains.get_domain(session, domain_id=domain.id)
    assert _events(session) == [("domain", "created", None), ("domain", "deleted", None)]


# ------------------------------------------------- references to addresses that stop existing
def _reference_world(session: Session) -> dict[str, int]:
    """Acme: acme.example (alias domain acme-alias.example) and acme2.example, with aliases
    and catch-alls pointing at gone@acme.example directly, through the alias domain, through
    a chain, plus a ring; Beta: an alias with a legacy (pre-check) target into Acme."""
    acme = make_customer(session, "Acme")
    beta = make_customer(session, "Beta")
    acme_domain = make_domain(session, "acme.example", acme)
    acme2 = make_domain(session, "acme2.example", acme)
    beta_domain = make_domain(session, "beta.example", beta)
    domains.add_domain_alias(
        session, actor=CLI_ACTOR, domain_id=acme_domain.id, alias_name="acme-alias.example"
    )
    gone = make_mailbox(session, "gone@acme.example")
    for address in ("keep@acme.example", "x@acme2.example", "b@beta.example"):
        make_mailbox(session, address)
    make_alias(session, "half@acme2.example", ["gone@acme.example", "x@acme2.example"])
    make_alias(session, "only@acme2.example", ["gone@acme-alias.example"])
    make_alias(session, "chain@acme2.example", ["only@acme2.example"])
    ring1 = make_alias(session, "ring1@acme2.example", ["x@acme2.example"])
    make_alias(session, "ring2@acme2.example", ["ring1@acme2.example"])
    aliases.set_alias_targets(
        session, actor=CLI_ACTOR, alias_id=ring1.id, targets=["ring2@acme2.example"]
    )
    inner = make_alias(session, "inner@acme.example", ["keep@acme.example"])
    make_alias(session, "viainner@acme2.example", ["inner@acme.example", "x@acme2.example"])
    legacy = make_alias(session, "legacy@beta.example", ["b@beta.example"])
    # Written before targets had to belong to the same customer: the check refuses it now.
    legacy.targets.append(AliasTarget(address="gone@acme.example"))
    domains.set_catchall(
        session, actor=CLI_ACTOR, domain_id=acme_domain.id, target="gone@acme.example"
    )
    domains.set_catchall(session, actor=CLI_ACTOR, domain_id=acme2.id, target="chain@acme2.example")
    session.flush()
    return {
        "acme": acme.id,
        "acme_domain": acme_domain.id,
        "acme2": acme2.id,
        "beta_domain": beta_domain.id,
        "gone": gone.id,
        "ring1": ring1.id,
        "inner": inner.id,
    }


UNTOUCHED = {
    "half@acme2.example": ["gone@acme.example", "x@acme2.example"],
    "only@acme2.example": ["gone@acme-alias.example"],
    "chain@acme2.example": ["only@acme2.example"],
    "ring1@acme2.example": ["ring2@acme2.example"],
    "ring2@acme2.example": ["ring1@acme2.example"],
    "inner@acme.example": ["keep@acme.example"],
    "viainner@acme2.example": ["inner@acme.example", "x@acme2.example"],
    "legacy@beta.example": ["b@beta.example", "gone@acme.example"],
}
LAST = "alias deleted (last target deleted)"
GONE_CHAIN = {  # what losing gone@acme.example (all its forms) does beyond the direct targets
    ("alias.target_removed", "chain@acme2.example", f"only@acme2.example: {LAST}"),
    ("alias.deleted", "only@acme2.example", "last target deleted"),
    ("alias.deleted", "chain@acme2.example", "last target deleted"),
    ("domain.catchall_cleared", "acme2.example", f"chain@acme2.example: {LAST}"),
}


def _drop(*names: str, **changed: list[str]) -> dict[str, list[str]]:
    kept = {k: v for k, v in UNTOUCHED.items() if k not in names}
    return {**kept, **changed}


CLEANUP_ROWS = [
    # (what is deleted, alias -> targets afterwards, catch-alls afterwards, audit entries added)
    (
        "mailbox",
        _drop(
            "only@acme2.example",
            "chain@acme2.example",
            **{
                "half@acme2.example": ["x@acme2.example"],
                "legacy@beta.example": ["b@beta.example"],
            },
        ),
        {"acme.example": None, "acme2.example": None, "beta.example": None},
        {
            ("mailbox.delete", "gone@acme.example", None),
            ("domain.catchall_cleared", "acme.example", "gone@acme.example: mailbox deleted"),
            ("alias.target_removed", "half@acme2.example", "gone@acme.example: mailbox deleted"),
            (
                "alias.target_removed",
                "only@acme2.example",
                "gone@acme-alias.example: mailbox deleted",
            ),
            ("alias.target_removed", "legacy@beta.example", "gone@acme.example: mailbox deleted"),
            *GONE_CHAIN,
        },
    ),
    (
        "alias in a ring",
        _drop("ring1@acme2.example", "ring2@acme2.example"),
        {"acme.example": "gone@acme.example", "acme2.example": "chain@acme2.example",
         "beta.example": None},
        {
            ("alias.delete", "ring1@acme2.example", None),
            ("alias.target_removed", "ring2@acme2.example", "ring1@acme2.example: alias deleted"),
            ("alias.deleted", "ring2@acme2.example", "last target deleted"),
            # ring2 pointed back at ring1, which was already gone: nothing more to remove.
        },
    ),
    (
        "alias named by another",
        _drop("inner@acme.example", **{"viainner@acme2.example": ["x@acme2.example"]}),
        {"acme.example": "gone@acme.example", "acme2.example": "chain@acme2.example",
         "beta.example": None},
        {
            ("alias.delete", "inner@acme.example", None),
            (
                "alias.target_removed",
                "viainner@acme2.example",
                "inner@acme.example: alias deleted",
            ),
        },
    ),
    (
        "domain",
        _drop(
            "only@acme2.example",
            "chain@acme2.example",
            "inner@acme.example",
            **{
                "half@acme2.example": ["x@acme2.example"],
                "viainner@acme2.example": ["x@acme2.example"],
                "legacy@beta.example": ["b@beta.example"],
            },
        ),
        {"acme2.example": None, "beta.example": None},
        {
            ("domain.delete", "acme.example", "cascade: 2 mailbox(es), 1 alias(es)"),
            ("alias.target_removed", "half@acme2.example", "gone@acme.example: domain deleted"),
            (
                "alias.target_removed",
                "only@acme2.example",
                "gone@acme-alias.example: domain deleted",
            ),
            (
                "alias.target_removed",
                "viainner@acme2.example",
                "inner@acme.example: domain deleted",
            ),
            ("alias.target_removed", "legacy@beta.example", "gone@acme.example: domain deleted"),
            *GONE_CHAIN,
        },
    ),
    (
        "alias domain",
        _drop("only@acme2.example", "chain@acme2.example"),
        {"acme.example": "gone@acme.example", "acme2.example": None, "beta.example": None},
        {
            ("domain_alias.delete", "acme-alias.example", "-> acme.example"),
            (
                "alias.target_removed",
                "only@acme2.example",
                "gone@acme-alias.example: alias domain removed",
            ),
            *GONE_CHAIN,
        },
    ),
]  # fmt: skip


def _delete(session: Session, ids: dict[str, int], what: str) -> None:
    if what == "mailbox":
        mailboxes.delete_mailbox(session, actor=CLI_ACTOR, mailbox_id=ids["gone"])
    elif what == "alias in a ring":
        aliases.delete_alias(session, actor=CLI_ACTOR, alias_id=ids["ring1"])
    elif what == "alias named by another":
        aliases.delete_alias(session, actor=CLI_ACTOR, alias_id=ids["inner"])
    elif what == "domain":
        domains.delete_domain(session, actor=CLI_ACTOR, domain_id=ids["acme_domain"], cascade=True)
    elif what == "alias domain":
        domains.remove_domain_alias(session, actor=CLI_ACTOR, alias_name="acme-alias.example")
    else:  # pragma: no cover - a typo in the table
        raise AssertionError(what)


def _targets(session: Session) -> dict[str, list[str]]:
    return {
        alias.address: [t.address for t in alias.targets]
        for alias in session.scalars(select(Alias).order_by(Alias.id))
    }


def _catchalls(session: Session) -> dict[str, str | None]:
    return {d.name: d.catchall_target for d in session.scalars(select(Domain).order_by(Domain.id))}


@pytest.mark.parametrize(
    ("what", "targets", "catchalls", "audited"), CLEANUP_ROWS, ids=[r[0] for r in CLEANUP_ROWS]
)
def test_deleting_an_address_removes_every_reference_to_it(
    session_factory: sessionmaker[Session],
    what: str,
    targets: dict[str, list[str]],
    catchalls: dict[str, str | None],
    audited: set[tuple[str, str, str | None]],
) -> None:
    with transaction(session_factory) as s:
        ids = _reference_world(s)
        assert _targets(s) == UNTOUCHED
        last_audit = s.scalar(select(func.max(AuditEntry.id)))
    with transaction(session_factory) as s:
        _delete(s, ids, what)
    # A fresh session: what was committed, not what one session's objects remember.
    with session_factory() as s:
        assert _targets(s) == targets
        assert _catchalls(s) == catchalls
        entries = s.execute(
            select(AuditEntry.action, AuditEntry.object_name, AuditEntry.detail).where(
                AuditEntry.id > last_audit
            )
        ).all()
        assert sorted(entries, key=repr) == sorted(audited, key=repr)
        assert len(entries) == len(audited)  # each recorded once
        # Nothing left pointing at an address that is not there.
        for address in [*(a for ts in targets.values() for a in ts), *catchalls.values()]:
            if address is not None:
                assert domains.customer_of_address(s, address) is not None, address


def test_customer_cascade_removes_references_from_other_customers(
    session_factory: sessionmaker[Session],
) -> None:
    with transaction(session_factory) as s:
        ids = _reference_world(s)
        last_audit = s.scalar(select(func.max(AuditEntry.id)))
    with transaction(session_factory) as s:
        customers.delete_customer(s, actor=CLI_ACTOR, customer_id=ids["acme"], cascade=True)
    with session_factory() as s:
        assert _targets(s) == {"legacy@beta.example": ["b@beta.example"]}
        assert _catchalls(s) == {"beta.example": None}
        removed = s.execute(
            select(AuditEntry.action, AuditEntry.object_name, AuditEntry.detail).where(
                AuditEntry.id > last_audit, AuditEntry.object_name == "legacy@beta.example"
            )
        ).all()
        assert removed == [
            ("alias.target_removed", "legacy@beta.example", "gone@acme.example: domain deleted")
        ]


def test_reregistered_domain_receives_nothing_meant_for_the_old_owner(
    session_factory: sessionmaker[Session],
) -> None:
    """The audit's scenario: Acme deletes a domain, Beta registers the same name and creates
    the same address; Acme's remaining alias and catch-all must not deliver to Beta."""
    with transaction(session_factory) as s:
        ids = _reference_world(s)
        # Acme's acme2 catch-all straight at the address that will change hands.
        domains.set_catchall(s, actor=CLI_ACTOR, domain_id=ids["acme2"], target="gone@acme.example")
    with transaction(session_factory) as s:
        domains.delete_domain(s, actor=CLI_ACTOR, domain_id=ids["acme_domain"], cascade=True)
    with transaction(session_factory) as s:
        beta = customers.get_customer_by_name(s, name="Beta")
        make_domain(s, "acme.example", beta)
        make_mailbox(s, "gone@acme.example")
    with session_factory() as s:
        for address in ("half@acme2.example", "whoever@acme2.example"):
            result = resolve_recipient(s, address=address)
            delivered = sorted(t.address for t in result.targets)
            assert "gone@acme.example" not in delivered, (address, delivered)
        assert sorted(
            t.address for t in resolve_recipient(s, address="half@acme2.example").targets
        ) == ["x@acme2.example"]
