"""Relay domains as a service: create/convert, settings, listed recipients (CSV), hold, flush,
release, deletion with queued mail, the queue summary, and the next-hop parser and loop check."""

from __future__ import annotations

import datetime as dt

import dns.resolver
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import ConflictError, NotFoundError, ValidationError
from app.models import (
    RCPT_DEFERRED,
    RCPT_HELD,
    RCPT_QUEUED,
    AuditEntry,
    Domain,
    LifecycleEvent,
    OutboundRecipient,
    RelayRecipient,
)
from app.services import queue, relay, relay_recipients
from app.services.audit import CLI_ACTOR
from app.services.relay_hop import HOP_HOST, HOP_MX, NextHop, parse_next_hop, self_check
from app.services.resolution import Verdict, resolve_recipient
from tests.factories import make_customer, make_domain, make_mailbox

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


def _relay(session: Session, name: str = "shop.example", **kw: object) -> Domain:
    customer = make_customer(session, f"Customer of {name}")
    return relay.create_relay_domain(
        session,
        actor=CLI_ACTOR,
        customer_id=customer.id,
        name=name,
        next_hop=str(kw.pop("next_hop", "mail.shop.example:2525")),
        **kw,  # type: ignore[arg-type]
    )


def _queue(session: Session, *recipients: str, at: dt.datetime = NOW) -> None:
    queue.enqueue(
        session,
        spool_id=f"{len(recipients):02d}" + "0" * 18,
        size=10,
        sender="a@sender.example",
        recipients=list(recipients),
        origin="relay",
        now=at,
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail.shop.example", NextHop(HOP_HOST, "mail.shop.example", None)),
        ("Mail.Shop.Example:2525", NextHop(HOP_HOST, "mail.shop.example", 2525)),
        ("192.0.2.7:25", NextHop(HOP_HOST, "192.0.2.7", 25)),
        ("[2001:db8::7]:587", NextHop(HOP_HOST, "2001:db8::7", 587)),
        ("mx:shop.example", NextHop(HOP_MX, "shop.example", None)),
        ("MX: büro.example", NextHop(HOP_MX, "xn--bro-hoa.example", None)),
    ],
)
def test_next_hop_forms(text: str, expected: NextHop) -> None:
    assert parse_next_hop(text) == expected
    assert parse_next_hop(str(expected)) == expected


@pytest.mark.parametrize(
    "text", ["", "localhost", "host.example:0", "host.example:70000", "[nothost]:25", "a b:25"]
)
def test_bad_next_hops_are_refused(text: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_next_hop(text)
    assert info.value.field == "next_hop"


def test_next_hop_that_is_us_is_refused() -> None:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = 9  # nothing answers: DNS errors accept the hop, names still match
    resolver.lifetime = 0.5
    check = self_check(
        own_names=["mx.isp.example"],
        own_endpoints=[("127.0.0.1", 2525)],
        default_port=25,
        resolver=resolver,
    )
    with pytest.raises(ValidationError, match="mail loop"):
        check(parse_next_hop("127.0.0.1:2525"))
    with pytest.raises(ValidationError, match="mail loop"):
        check(parse_next_hop("MX.isp.example"))
    check(parse_next_hop("127.0.0.1:2526"))  # another port: another server
    check(parse_next_hop("127.0.0.2:2525"))


def test_create_relay_domain_records_events_and_is_not_hosted(session: Session) -> None:
    domain = _relay(session, flush_networks=["192.0.2.7", "2001:db8::/64"])
    assert domain.kind == "relay"
    assert domain.relay is not None
    assert domain.relay.next_hop == "mail.shop.example:2525"
    assert domain.relay.flush_network_list == ["192.0.2.7/32", "2001:db8::/64"]
    assert (domain.relay.recipient_mode, domain.relay.max_queue_age) == ("list", 10 * 86400)
    events = [(e.entity, e.action) for e in session.scalars(select(LifecycleEvent))]
    assert events == [("domain", "created"), ("relay_domain", "created")]
    # The MX's hosted resolution does not see it; relay_info does.
    assert resolve_recipient(session, address="x@shop.example").verdict is Verdict.UNKNOWN_DOMAIN
    info = relay.relay_info(session, domain_name="shop.example")
    assert info is not None and info.active and info.may_flush("192.0.2.7")
    assert not info.may_flush("192.0.2.8")
    assert info.may_flush("2001:db8::1") and not info.may_flush("::ffff:192.0.2.9")


def test_bad_settings_leave_nothing_behind(session: Session) -> None:
    customer = make_customer(session, "Acme")
    for bad in (
        {"next_hop": "nonsense:99999"},
        {"next_hop": "ok.example", "tls_policy": "maybe"},
        {"next_hop": "ok.example", "recipient_mode": "all"},
        {"next_hop": "ok.example", "max_queue_age": 0},
        {"next_hop": "ok.example", "flush_networks": ["10.0.0.0/33"]},
    ):
        with pytest.raises(ValidationError):
            relay.create_relay_domain(
                session, actor=CLI_ACTOR, customer_id=customer.id, name="x.example", **bad
            )  # type: ignore[arg-type]
    assert session.scalars(select(Domain)).all() == []


def test_convert_hosted_domain(session: Session) -> None:
    hosted = make_domain(session, "office.example")
    domain = relay.convert_to_relay(
        session, actor=CLI_ACTOR, domain_id=hosted.id, next_hop="mx:office.example"
    )
    assert domain.kind == "relay"
    with pytest.raises(ConflictError):
        relay.convert_to_relay(session, actor=CLI_ACTOR, domain_id=hosted.id, next_hop="a.example")
    busy = make_mailbox(session, "u@busy.example").domain
    with pytest.raises(ConflictError, match="1 mailbox"):
        relay.convert_to_relay(session, actor=CLI_ACTOR, domain_id=busy.id, next_hop="a.example")
    from app.services import domains

    aliased = make_domain(session, "aliased.example")
    domains.add_domain_alias(
        session, actor=CLI_ACTOR, domain_id=aliased.id, alias_name="other-name.example"
    )
    with pytest.raises(ConflictError, match="1 alias domain"):
        relay.convert_to_relay(session, actor=CLI_ACTOR, domain_id=aliased.id, next_hop="a.example")


def test_update_is_audited(session: Session) -> None:
    domain = _relay(session)
    relay.update_relay(
        session,
        actor=CLI_ACTOR,
        domain_id=domain.id,
        recipient_mode="verify",
        tls_policy="required",
        callout_cache_seconds=0,
    )
    info = relay.relay_info(session, domain_name=domain.name)
    assert info is not None
    assert (info.recipient_mode, info.tls_policy, info.callout_cache_seconds) == (
        "verify",
        "required",
        0,
    )
    detail = session.scalars(
        select(AuditEntry.detail).where(AuditEntry.action == "relay.update")
    ).one()
    assert detail is not None and "recipient_mode: list -> verify" in detail
    with pytest.raises(NotFoundError):
        relay.get_relay(session, domain_id=make_domain(session, "h.example").id)


def test_recipients_add_remove_import_export(session: Session) -> None:
    domain = _relay(session)
    relay_recipients.add_recipient(
        session, actor=CLI_ACTOR, domain_id=domain.id, address="Anna@Shop.Example"
    )
    with pytest.raises(ConflictError):
        relay_recipients.add_recipient(
            session, actor=CLI_ACTOR, domain_id=domain.id, address="anna"
        )
    with pytest.raises(ValidationError, match="not an address of shop.example"):
        relay_recipients.add_recipient(
            session, actor=CLI_ACTOR, domain_id=domain.id, address="a@x.example"
        )
    assert relay_recipients.is_listed(session, domain_id=domain.id, local_part="ANNA")
    summary = relay_recipients.import_recipients(
        session,
        actor=CLI_ACTOR,
        domain_id=domain.id,
        text="address\r\nanna@shop.example\r\n# comment\r\n\r\nbert\r\n=cmd@shop.example\r\n",
    )
    assert summary == relay_recipients.ImportSummary(added=2, already_listed=1, removed=0)
    exported = relay_recipients.export_recipients_csv(session, domain_id=domain.id)
    assert exported.splitlines() == [
        "address",
        "'=cmd@shop.example",
        "anna@shop.example",
        "bert@shop.example",
    ]
    # A bad file stores nothing and names every bad line.
    with pytest.raises(ValidationError) as info:
        relay_recipients.import_recipients(
            session, actor=CLI_ACTOR, domain_id=domain.id, text="carl\nbad local\nx@other.example\n"
        )
    assert "line 2" in info.value.message and "line 3" in info.value.message
    assert not relay_recipients.is_listed(session, domain_id=domain.id, local_part="carl")
    again = relay_recipients.import_recipients(
        session, actor=CLI_ACTOR, domain_id=domain.id, text=exported, replace=True
    )
    assert again == relay_recipients.ImportSummary(added=0, already_listed=3, removed=0)
    relay_recipients.import_recipients(
        session, actor=CLI_ACTOR, domain_id=domain.id, text="bert", replace=True
    )
    assert [
        r.local_part for r in relay_recipients.list_recipients(session, domain_id=domain.id)
    ] == ["bert"]
    relay_recipients.remove_recipient(session, actor=CLI_ACTOR, domain_id=domain.id, address="bert")
    with pytest.raises(NotFoundError):
        relay_recipients.remove_recipient(
            session, actor=CLI_ACTOR, domain_id=domain.id, address="bert"
        )


def _states(session: Session) -> list[tuple[str, str]]:
    return [
        (r.address, r.state)
        for r in session.scalars(select(OutboundRecipient).order_by(OutboundRecipient.id))
    ]


def test_hold_release_flush_and_summary(session: Session) -> None:
    domain = _relay(session)
    _queue(session, "a@shop.example", "b@elsewhere.example", at=NOW - dt.timedelta(hours=2))
    _queue(session, "c@shop.example")
    session.execute(
        OutboundRecipient.__table__.update()
        .where(OutboundRecipient.address == "c@shop.example")
        .values(
            state=RCPT_DEFERRED,
            next_attempt_at=NOW + dt.timedelta(hours=1),
            last_attempt_at=NOW,
            last_reply_code=421,
            last_reply_text="4.4.1 connection refused",
        )
    )
    session.expire_all()
    summary = relay.queue_summary(session, domain_id=domain.id)
    assert (summary.count, summary.held) == (2, 0)
    assert summary.oldest == NOW - dt.timedelta(hours=2)
    assert summary.last_error == "421 4.4.1 connection refused"
    assert relay.flush(session, actor=CLI_ACTOR, domain_id=domain.id, now=NOW) == 1
    assert relay.hold(session, actor=CLI_ACTOR, domain_id=domain.id, reason="weekend") == 2
    assert _states(session) == [
        ("a@shop.example", RCPT_HELD),
        ("b@elsewhere.example", RCPT_QUEUED),
        ("c@shop.example", RCPT_HELD),
    ]
    with pytest.raises(ConflictError, match="held"):
        relay.flush(session, actor=CLI_ACTOR, domain_id=domain.id, now=NOW)
    assert relay.release(session, actor=CLI_ACTOR, domain_id=domain.id, now=NOW) == 2
    assert [s for _, s in _states(session)] == [RCPT_QUEUED] * 3


def test_delete_with_queued_mail_needs_discard(session: Session) -> None:
    domain = _relay(session)
    relay_recipients.add_recipient(session, actor=CLI_ACTOR, domain_id=domain.id, address="anna")
    _queue(session, "anna@shop.example", "b@elsewhere.example")
    _queue(session, "bert@shop.example")
    with pytest.raises(ConflictError, match="2 queued recipient"):
        relay.delete_relay_domain(session, actor=CLI_ACTOR, domain_id=domain.id)
    from app.services import domains

    with pytest.raises(ConflictError, match="2 queued recipient"):
        domains.delete_domain(session, actor=CLI_ACTOR, domain_id=domain.id, cascade=True)
    spool_ids = relay.delete_relay_domain(
        session, actor=CLI_ACTOR, domain_id=domain.id, discard=True
    )
    assert spool_ids == ["01" + "0" * 18]  # the message with no recipient left
    assert _states(session) == [("b@elsewhere.example", RCPT_QUEUED)]
    assert session.scalars(select(RelayRecipient)).all() == []
    assert session.get(Domain, domain.id) is None
    actions = session.scalars(select(AuditEntry.action).order_by(AuditEntry.id)).all()
    assert actions[-2:] == ["relay.discard", "domain.delete"]
    events = [(e.entity, e.action) for e in session.scalars(select(LifecycleEvent))]
    assert events[-2:] == [("relay_domain", "deleted"), ("domain", "deleted")]


def test_a_relay_domain_has_no_mailboxes_aliases_or_catchall(session: Session) -> None:
    from app.services import aliases, domains, mailboxes

    domain = _relay(session)
    with pytest.raises(ConflictError, match="is a relay domain: it has no mailboxes"):
        mailboxes.create_mailbox(
            session, actor=CLI_ACTOR, address="anna@shop.example", password="correct horse"
        )
    with pytest.raises(ConflictError, match="no aliases"):
        aliases.create_alias(
            session, actor=CLI_ACTOR, address="team@shop.example", targets=["a@b.example"]
        )
    with pytest.raises(ConflictError, match="no alias domains"):
        domains.add_domain_alias(
            session, actor=CLI_ACTOR, domain_id=domain.id, alias_name="shop2.example"
        )
    make_mailbox(session, "u@hosted.example")
    with pytest.raises(ConflictError, match="no catch-all"):
        domains.set_catchall(
            session, actor=CLI_ACTOR, domain_id=domain.id, target="u@hosted.example"
        )
