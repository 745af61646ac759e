"""DKIM key services on a real database: generate, rotate, retire, the signing key, and the
recommended records, whose DKIM TXT text (published in the real test DNS server) verifies."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app import dkim
from app.errors import ConflictError, NotFoundError, ValidationError
from app.models import AuditEntry, DkimKey
from app.services import dkim as dkim_service
from app.services import domains
from app.services.audit import CLI_ACTOR
from app.services.dkim import DnsPolicy
from tests.dkim_helpers import signature_tags, verify
from tests.dnsserver import TestDNSServer
from tests.factories import make_domain

POLICY = DnsPolicy(mx_hostname="mx.isp.example")
MESSAGE = (
    b"From: alice@hosted.example\r\nTo: bob@remote.example\r\nSubject: hi\r\n"
    b"Date: Wed, 02 Dec 2026 08:00:00 +0000\r\n\r\nHello.\r\n"
)


def _publish_recommended(session: Session, domain_id: int, server: TestDNSServer) -> list[str]:
    """Put exactly the recommended DKIM records into the DNS server; their selectors."""
    selectors = []
    for record in dkim_service.recommended_records(session, domain_id=domain_id, policy=POLICY):
        if record.purpose == "dkim":
            server.zone.txt(record.name, record.value)
            selectors.append(record.selector)
    return selectors


def _sign(session: Session) -> bytes:
    key = dkim_service.signing_key_for(session, domain="hosted.example")
    assert key is not None
    return dkim.sign_message(MESSAGE, key)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_generated_key_signs_and_verifies_against_the_recommended_record(
    session: Session, dns_server: TestDNSServer, algorithm: str
) -> None:
    domain = make_domain(session)
    key = dkim_service.generate_key(
        session, actor=CLI_ACTOR, domain_id=domain.id, selector="s1", algorithm=algorithm
    )
    session.commit()
    assert (key.state, key.selector, key.algorithm) == ("active", "s1", f"{algorithm}-sha256")
    assert _publish_recommended(session, domain.id, dns_server) == ["s1"]
    signed = _sign(session)
    assert signature_tags(signed)["s"] == "s1"
    assert verify(signed, dns_server)


def test_rotation_signs_with_the_new_key_and_keeps_the_old_record_until_retired(
    session: Session, dns_server: TestDNSServer
) -> None:
    domain = make_domain(session)
    dkim_service.generate_key(
        session, actor=CLI_ACTOR, domain_id=domain.id, selector="old", algorithm="ed25519"
    )
    session.commit()
    _publish_recommended(session, domain.id, dns_server)
    signed_before = _sign(session)

    new = dkim_service.rotate_key(session, actor=CLI_ACTOR, domain_id=domain.id, selector="new")
    session.commit()
    assert new.algorithm == "ed25519-sha256"  # the current key's algorithm by default
    states = {k.selector: k.state for k in dkim_service.list_keys(session, domain_id=domain.id)}
    assert states == {"new": "active", "old": "published"}
    dns_server.zone.clear("old._domainkey.hosted.example")
    assert _publish_recommended(session, domain.id, dns_server) == ["new", "old"]
    signed_after = _sign(session)
    assert signature_tags(signed_after)["s"] == "new"
    assert verify(signed_after, dns_server)
    assert verify(signed_before, dns_server)  # mail in transit still verifies

    retired = dkim_service.retire_key(session, actor=CLI_ACTOR, domain_id=domain.id, selector="OLD")
    session.commit()
    assert retired.state == "retired" and retired.retired_at is not None
    assert retired.private_key_pem is None  # erased
    records = dkim_service.recommended_records(session, domain_id=domain.id, policy=POLICY)
    assert [r.selector for r in records if r.purpose == "dkim"] == ["new"]
    # Still listed as history, and its selector can never be used again.
    assert {k.selector for k in dkim_service.list_keys(session, domain_id=domain.id)} == {
        "new",
        "old",
    }
    with pytest.raises(ConflictError, match="never reused"):
        dkim_service.generate_key(session, actor=CLI_ACTOR, domain_id=domain.id, selector="old")
    session.rollback()
    actions = session.scalars(
        select(AuditEntry.action).where(AuditEntry.action.like("dkim.%")).order_by(AuditEntry.id)
    ).all()
    assert actions == ["dkim.generate", "dkim.rotate", "dkim.retire"]


def test_generate_on_a_domain_with_a_key_rotates(session: Session) -> None:
    domain = make_domain(session)
    first = dkim_service.generate_key(session, actor=CLI_ACTOR, domain_id=domain.id)
    second = dkim_service.generate_key(
        session, actor=CLI_ACTOR, domain_id=domain.id, algorithm="ed25519"
    )
    session.commit()
    assert first.selector.startswith("mh") and len(first.selector) == len("mh20261202")
    assert second.selector == f"{first.selector}-2"
    assert (first.state, second.state) == ("published", "active")
    assert (first.algorithm, first.key_bits) == ("rsa-sha256", 2048)
    assert dkim_service.active_key(session, domain_id=domain.id) == second


def test_retiring_the_signing_key_leaves_the_domain_unsigned(session: Session) -> None:
    domain = make_domain(session)
    dkim_service.generate_key(
        session, actor=CLI_ACTOR, domain_id=domain.id, selector="s1", algorithm="ed25519"
    )
    dkim_service.retire_key(session, actor=CLI_ACTOR, domain_id=domain.id, selector="s1")
    session.commit()
    assert dkim_service.signing_key_for(session, domain="hosted.example") is None
    detail = session.scalar(select(AuditEntry.detail).where(AuditEntry.action == "dkim.retire"))
    assert detail is not None and "unsigned" in detail


@pytest.mark.parametrize(
    ("call", "error", "field"),
    [
        (
            lambda s, d: dkim_service.generate_key(s, actor=CLI_ACTOR, domain_id=9999),
            NotFoundError,
            "domain_id",
        ),
        (
            lambda s, d: dkim_service.generate_key(
                s, actor=CLI_ACTOR, domain_id=d, algorithm="dsa"
            ),
            ValidationError,
            "algorithm",
        ),
        (
            lambda s, d: dkim_service.generate_key(s, actor=CLI_ACTOR, domain_id=d, selector="a_b"),
            ValidationError,
            "selector",
        ),
        (
            lambda s, d: dkim_service.rotate_key(s, actor=CLI_ACTOR, domain_id=d),
            ConflictError,
            "domain_id",
        ),
        (
            lambda s, d: dkim_service.retire_key(s, actor=CLI_ACTOR, domain_id=d, selector="nope"),
            NotFoundError,
            "selector",
        ),
        (lambda s, d: dkim_service.list_keys(s, domain_id=9999), NotFoundError, "domain_id"),
        (
            lambda s, d: dkim_service.recommended_records(s, domain_id=9999, policy=POLICY),
            NotFoundError,
            "domain_id",
        ),
    ],
)
def test_refusals_change_nothing(session: Session, call: object, error: type, field: str) -> None:
    domain = make_domain(session)
    session.commit()
    with pytest.raises(error) as err:
        call(session, domain.id)  # type: ignore[operator]
    assert err.value.field == field
    session.rollback()
    assert session.scalars(select(DkimKey)).all() == []
    assert session.scalars(select(AuditEntry).where(AuditEntry.action.like("dkim.%"))).all() == []


def test_retiring_twice_is_a_conflict(session: Session) -> None:
    domain = make_domain(session)
    dkim_service.generate_key(
        session, actor=CLI_ACTOR, domain_id=domain.id, selector="s1", algorithm="ed25519"
    )
    dkim_service.retire_key(session, actor=CLI_ACTOR, domain_id=domain.id, selector="s1")
    with pytest.raises(ConflictError, match="retired already"):
        dkim_service.retire_key(session, actor=CLI_ACTOR, domain_id=domain.id, selector="s1")


def test_signing_key_for_names_and_non_signing_domains(session: Session) -> None:
    domain = make_domain(session, "bücher.example")
    make_domain(session, "nokey.example")
    domains.add_domain_alias(
        session, actor=CLI_ACTOR, domain_id=domain.id, alias_name="alias.example"
    )
    dkim_service.generate_key(
        session, actor=CLI_ACTOR, domain_id=domain.id, selector="s1", algorithm="ed25519"
    )
    session.commit()
    for name in ("bücher.example", "XN--BCHER-KVA.example"):
        key = dkim_service.signing_key_for(session, domain=name)
        assert key is not None and (key.domain, key.selector) == ("xn--bcher-kva.example", "s1")
    for name in ("nokey.example", "alias.example", "unknown.example", "not a domain"):
        assert dkim_service.signing_key_for(session, domain=name) is None


def test_recommended_records_follow_the_policy(session: Session) -> None:
    domain = make_domain(session)
    dkim_service.generate_key(
        session, actor=CLI_ACTOR, domain_id=domain.id, selector="s1", algorithm="ed25519"
    )
    policy = DnsPolicy(
        mx_hostname="mx.isp.example",
        spf_include="_spf.isp.example",
        dmarc_report_address="dmarc@isp.example",
        dmarc_policy="quarantine",
    )
    records = dkim_service.recommended_records(session, domain_id=domain.id, policy=policy)
    rows = [(r.purpose, r.type, r.name, r.value) for r in records]
    key = dkim_service.active_key(session, domain_id=domain.id)
    assert key is not None
    assert rows == [
        ("mx", "MX", "hosted.example.", "10 mx.isp.example."),
        ("spf", "TXT", "hosted.example.", "v=spf1 mx include:_spf.isp.example -all"),
        ("dkim", "TXT", "s1._domainkey.hosted.example.", f"v=DKIM1; k=ed25519; p={key.public_key}"),
        (
            "dmarc",
            "TXT",
            "_dmarc.hosted.example.",
            "v=DMARC1; p=quarantine; rua=mailto:dmarc@isp.example",
        ),
    ]
    plain = dkim_service.recommended_records(session, domain_id=domain.id, policy=POLICY)
    assert plain[1].value == "v=spf1 mx -all"
    assert plain[-1].value == "v=DMARC1; p=none"
    assert plain[-1].zone_text == '"v=DMARC1; p=none"'


def test_deleting_the_domain_deletes_its_keys(session: Session) -> None:
    domain = make_domain(session)
    dkim_service.generate_key(
        session, actor=CLI_ACTOR, domain_id=domain.id, selector="s1", algorithm="ed25519"
    )
    session.commit()
    domains.delete_domain(session, actor=CLI_ACTOR, domain_id=domain.id)
    session.commit()
    assert session.scalars(select(DkimKey)).all() == []
    # The name hosted again (perhaps by someone else) starts without the old keys.
    again = make_domain(session)
    session.commit()
    assert dkim_service.list_keys(session, domain_id=again.id) == []
