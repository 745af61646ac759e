"""The DNS records a relay domain's customer publishes: MX only; primary or backup MX."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.services import dkim, relay, relay_dns
from app.services.audit import CLI_ACTOR
from app.services.dkim import DnsPolicy
from tests.factories import make_customer, make_domain

POLICY = DnsPolicy(mx_hostname="mx.isp.example", spf_include="_spf.isp.example")


def test_a_relay_domain_publishes_only_our_mx(session: Session) -> None:
    customer = make_customer(session, "Shop")
    shop = relay.create_relay_domain(
        session, actor=CLI_ACTOR, customer_id=customer.id, name="shop.example", next_hop="x.example"
    )
    hosted = make_domain(session, "hosted.example", customer)
    relay_records = dkim.recommended_records(session, domain_id=shop.id, policy=POLICY)
    assert [(r.purpose, r.type, r.name, r.value) for r in relay_records] == [
        ("mx", "MX", "shop.example.", "10 mx.isp.example.")
    ]
    hosted_records = dkim.recommended_records(session, domain_id=hosted.id, policy=POLICY)
    assert [r.purpose for r in hosted_records] == ["mx", "spf", "dmarc"]


ROWS = [
    # next hop, own server named in the backup records, known?
    ("mail.shop.example:2525", "mail.shop.example.", True),
    ("mail.shop.example", "mail.shop.example.", True),
    ("192.0.2.7:25", relay_dns.YOUR_SERVER, False),
    ("[2001:db8::7]:25", relay_dns.YOUR_SERVER, False),
    ("mx:shop-office.example", relay_dns.YOUR_SERVER, False),
]


def test_primary_and_backup_mx_options() -> None:
    for hop, own, known in ROWS:
        options = relay_dns.mx_options(domain_name="shop.example", next_hop=hop, policy=POLICY)
        assert [r.value for r in options.primary] == ["10 mx.isp.example."], hop
        # Backup MX: the customer's server preferred (lower number), ours higher.
        assert [(r.purpose, r.value) for r in options.backup] == [
            ("mx-own", f"10 {own}"),
            ("mx-backup", "20 mx.isp.example."),
        ], hop
        assert options.own_server_known is known, hop
        assert all(r.name == "shop.example." for r in options.primary + options.backup)
