"""rules_for_domain through a Core connection (the MX's way: one SELECT for a domain with
nothing of its own) gives what the ORM path gives, for every kind of domain."""

from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.scanning.decision import ScanPolicy
from app.services import scan_policy
from app.services.audit import CLI_ACTOR
from app.services.scan_policy import PolicyChange, rules_for_domain
from tests.factories import make_customer, make_domain

DEFAULTS = ScanPolicy(reject_score=15.0, tag_score=6.0, subject_tag="[SPAM]", greylisting=False)


def test_rules_through_a_connection_equal_the_orm_path(session: Session, engine: Engine) -> None:
    plain_customer = make_customer(session, "Plain")
    strict_customer = make_customer(session, "Strict")
    make_domain(session, "plain.example", plain_customer)
    own = make_domain(session, "own.example", plain_customer)
    make_domain(session, "inherits.example", strict_customer)
    listed = make_domain(session, "listed.example", plain_customer)
    scan_policy.set_override(
        session,
        actor=CLI_ACTOR,
        scope="domain",
        scope_id=own.id,
        change=PolicyChange(reject_score=9.0),
    )
    scan_policy.set_override(
        session,
        actor=CLI_ACTOR,
        scope="customer",
        scope_id=strict_customer.id,
        change=PolicyChange(tag_score=3.0, subject_tag="[S]"),
    )
    for list_name, value in (("block", "bad@spam.example"), ("allow", "10.0.0.0/8")):
        scan_policy.add_list_entry(
            session, actor=CLI_ACTOR, domain_id=listed.id, list_name=list_name, value=value
        )
    session.commit()
    names = ["plain.example", "Own.Example", "inherits.example", "listed.example", "nx.example"]
    with engine.connect() as connection:
        via_connection = {
            n: rules_for_domain(connection, domain_name=n, defaults=DEFAULTS) for n in names
        }
    via_session = {n: rules_for_domain(session, domain_name=n, defaults=DEFAULTS) for n in names}
    assert via_connection == via_session
    assert via_connection["Own.Example"].policy.reject_score == 9.0
    assert via_connection["inherits.example"].policy.subject_tag == "[S]"
    assert (
        via_connection["listed.example"].verdict(sender="bad@spam.example", client_ip="1.2.3.4")
        == "block"
    )
    assert via_connection["plain.example"].policy == DEFAULTS


def test_a_domain_of_its_own_defaults_is_one_select(session: Session, engine: Engine) -> None:
    make_domain(session, "plain.example")
    session.commit()
    statements: list[str] = []

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    with engine.connect() as connection:
        event.listen(engine, "before_cursor_execute", count)
        try:
            rules = rules_for_domain(connection, domain_name="plain.example", defaults=DEFAULTS)
        finally:
            event.remove(engine, "before_cursor_execute", count)
    assert rules.policy == DEFAULTS and not rules.allow and not rules.block
    assert len(statements) == 1
