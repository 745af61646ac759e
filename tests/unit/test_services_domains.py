"""Domain provisioning: IDNA names, uniqueness with alias domains, limits, catch-all, deletion."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.errors import ConflictError, LimitExceededError, NotFoundError, ValidationError
from app.models import AuditEntry, Domain, DomainAlias, LifecycleEvent, Mailbox
from app.services import domains
from app.services.audit import CLI_ACTOR
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
