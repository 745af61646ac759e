"""Allow and block lists with scanning on or off, and relay-domain mail scanned like hosted
mail (the relay domain's own policy, before its queue rows are committed), with real smtplib
clients, the real MX and the real rspamd and clamd (tests/scanners.py)."""

from __future__ import annotations

import base64
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MaildirStore
from app.models import ORIGIN_RELAY
from app.services import domains, relay, scan_log
from app.services.audit import CLI_ACTOR
from app.spool import SpoolStore
from tests.factories import make_customer
from tests.protocol.outbound_helpers import rows
from tests.protocol.smtp_helpers import ADDRESSES, IngressThread, new_messages, seed_world
from tests.scanners import EICAR, GTUBE
from tests.scanning.test_ingress_scanning import SENDER, head_of, message, sender_domain
from tests.scanning.test_policy_scanning import add_entry, set_domain

USER = ADDRESSES["user"]  # hosted.example
BUCKET = ADDRESSES["catchall_box"]  # catchall.example
SHOP = "shop.example"  # a relay domain (recipient mode "any"); its next hop is never asked
BUYER = f"buyer@{SHOP}"
__all__ = ["sender_domain"]  # the module fixture publishing sender.example's SPF


def add_shop(factory: sessionmaker[Session]) -> None:
    with transaction(factory) as s:
        customer = make_customer(s, "Shop Owner")
        relay.create_relay_domain(
            s,
            actor=CLI_ACTOR,
            customer_id=customer.id,
            name=SHOP,
            next_hop="127.0.0.2:2525",
            recipient_mode="any",
        )


def send(
    ingress: IngressThread, rcpts: list[str], data: bytes, *, sender: str = SENDER
) -> tuple[list[tuple[int, str]], int, str]:
    """RCPT replies, then the reply to the final dot (0 when no RCPT was accepted)."""
    with smtplib.SMTP(
        "127.0.0.1", ingress.port, local_hostname="client.sender.example", timeout=30
    ) as client:
        client.ehlo()
        client.mail(sender)
        replies = [(code, text.decode()) for code, text in (client.rcpt(r) for r in rcpts)]
        if not any(code == 250 for code, _ in replies):
            return replies, 0, ""
        code, text = client.data(data)
        return replies, code, text.decode()


def for_buyer(data: bytes) -> bytes:
    """The test message addressed to the relay recipient (rspamd scores a To: that matches
    no envelope recipient as FORGED_RECIPIENTS)."""
    return data.replace(f"To: <{USER}>".encode(), f"To: <{BUYER}>".encode(), 1)


def spool_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def rejections(factory: sessionmaker[Session], domain: str) -> list[str]:
    with factory() as s:
        domain_id = domains.get_domain_by_name(s, name=domain).id
        return [r.reason for r in scan_log.recent(s, domain_id=domain_id)]


def eicar_message() -> bytes:
    attachment = base64.encodebytes(EICAR).decode().replace("\n", "\r\n")
    body = (
        "--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        "--b1\r\nContent-Type: application/octet-stream\r\n"
        'Content-Disposition: attachment; filename="eicar.com"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{attachment}--b1--\r\n"
    )
    return message(
        body, extra='MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n'
    )


# ---------------------------------------------------------------- scanning off
@pytest.fixture
def plain_start(
    settings: Settings,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    tmp_path: Path,
) -> Iterator[Callable[..., IngressThread]]:
    """An ingress without any scanner configured (the ``make run`` default)."""
    seed_world(session_factory, store)
    add_shop(session_factory)
    started: list[IngressThread] = []

    def start(**overrides: Any) -> IngressThread:
        base = settings.model_copy(
            update={"smtp_greet_delay": 0.0, "spool_root": tmp_path / "spool", **overrides}
        )
        assert not base.scan_rspamd_address and not base.scan_clamd_address
        running = IngressThread(base, session_factory, store, greet_delay=0.0)
        started.append(running.start())
        return running

    yield start
    for running in started:
        running.stop()


@pytest.mark.parametrize("entry", [SENDER, "sender.example", "127.0.0.0/8", "::1/128,127.0.0.1"])
def test_block_list_refuses_at_rcpt_without_scanners(
    plain_start: Callable[..., IngressThread],
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    tmp_path: Path,
    entry: str,
) -> None:
    for value in entry.split(","):
        add_entry(session_factory, "hosted.example", "block", value)
        add_entry(session_factory, SHOP, "block", value)
    ingress = plain_start()
    replies, code, _ = send(ingress, [USER, BUYER, BUCKET], message())
    assert [c for c, _ in replies] == [550, 550, 250], replies
    assert replies[0][1].startswith("5.7.1 Recipient address rejected: sender blocked")
    assert code == 250
    assert new_messages(store, USER) == [] and len(new_messages(store, BUCKET)) == 1
    assert rows(session_factory) == [] and spool_files(tmp_path / "spool") == []
    ingress.stop()  # flushes the batched counters and rejections
    assert rejections(session_factory, "hosted.example") == ["block list"]
    assert rejections(session_factory, SHOP) == ["block list"]


def test_allow_list_without_scanners_accepts_and_a_block_still_wins(
    plain_start: Callable[..., IngressThread],
    session_factory: sessionmaker[Session],
    store: MaildirStore,
) -> None:
    add_entry(session_factory, "hosted.example", "allow", "sender.example")
    add_entry(session_factory, "catchall.example", "allow", SENDER)
    add_entry(session_factory, "catchall.example", "block", "127.0.0.1")
    ingress = plain_start()
    replies, code, _ = send(ingress, [USER, BUCKET], message())
    assert [c for c, _ in replies] == [250, 550] and code == 250
    head = head_of(new_messages(store, USER)[0])
    # Nothing scanned, nothing claimed: no scan fields at all with scanning off.
    assert "Authentication-Results" not in head and "X-Spam" not in head


# ---------------------------------------------------------------- relay domains, scanning on
@pytest.fixture
def relay_ingress(
    scan_start: Callable[..., IngressThread],
    session_factory: sessionmaker[Session],
    tmp_path: Path,
) -> IngressThread:
    add_shop(session_factory)
    return scan_start(spool_root=tmp_path / "spool")


def queued(factory: sessionmaker[Session], spool: Path) -> list[bytes]:
    """The spooled relay copies (one per queue message), CRLF as queued."""
    store = SpoolStore(spool)
    messages = {message.id: message for message, _ in rows(factory)}
    assert all(m.origin == ORIGIN_RELAY for m in messages.values())
    return [store.read(m.spool_id) for m in messages.values()]


def test_gtube_to_a_relay_domain_is_refused_and_nothing_queued(
    relay_ingress: IngressThread, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    replies, code, text = send(relay_ingress, [BUYER], for_buyer(message(GTUBE.decode() + "\r\n")))
    assert replies == [(250, "2.1.5 Recipient ok")]
    assert code == 550 and text.startswith("5.7.1 Message rejected as spam"), text
    assert "queue id " in text
    assert rows(session_factory) == [] and spool_files(tmp_path / "spool") == []
    relay_ingress.stop()  # flushes the batched counters and rejections
    assert len(rejections(session_factory, SHOP)) == 1


def test_eicar_to_a_relay_domain_is_refused_and_nothing_queued(
    relay_ingress: IngressThread, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    _, code, text = send(relay_ingress, [BUYER], eicar_message())
    assert code == 554 and text.startswith("5.7.1 Message rejected: virus"), text
    assert rows(session_factory) == [] and spool_files(tmp_path / "spool") == []


def test_gtube_to_relay_and_hosted_recipients_is_refused_for_both(
    relay_ingress: IngressThread,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    tmp_path: Path,
) -> None:
    """A relay recipient is no way around the scan of the hosted ones."""
    _, code, _ = send(relay_ingress, [BUYER, USER], message(GTUBE.decode() + "\r\n"))
    assert code == 550
    assert rows(session_factory) == [] and spool_files(tmp_path / "spool") == []
    assert new_messages(store, USER) == []


def test_clean_relay_mail_is_queued_with_authentication_results(
    relay_ingress: IngressThread, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    forged = "Authentication-Results: mx.mailhost.test; spf=pass smtp.mailfrom=x@y.example\r\n"
    _, code, text = send(relay_ingress, [BUYER], for_buyer(message(extra=forged)))
    assert code == 250, text
    [copy] = queued(session_factory, tmp_path / "spool")
    head = copy.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("Received: from client.sender.example ([127.0.0.1])")
    assert head.count("Authentication-Results: mx.mailhost.test;") == 1
    assert f"spf=pass smtp.mailfrom={SENDER}" in head and "smtp.mailfrom=x@y.example" not in head
    assert "X-Spam-Status: No, score=" in head and "Subject: Lunch" in head, head
    # The body exactly once, after the one header section.
    assert copy.count(b"Hello, this is an ordinary message.") == 1
    assert copy.endswith(b"\r\n\r\nHello, this is an ordinary message.\r\n")


def test_a_relay_domains_own_policy_decides(
    relay_ingress: IngressThread, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    set_domain(session_factory, SHOP, reject_score=-50.0, tag_score=-60.0)
    _, code, text = send(relay_ingress, [BUYER], for_buyer(message()))
    assert code == 550 and "spam score" in text, text
    assert rows(session_factory) == []


def test_relay_allow_list_skips_the_spam_check(
    relay_ingress: IngressThread, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    set_domain(session_factory, SHOP, reject_score=-50.0, tag_score=-60.0)
    add_entry(session_factory, SHOP, "allow", "sender.example")
    _, code, text = send(relay_ingress, [BUYER], for_buyer(message()))
    assert code == 250, text
    [copy] = queued(session_factory, tmp_path / "spool")
    head = copy.split(b"\r\n\r\n", 1)[0].decode()
    assert "Authentication-Results: mx.mailhost.test; none" in head  # rspamd not asked
    assert "X-Spam-Status" not in head


def test_relay_mail_tagged_by_its_domain(
    relay_ingress: IngressThread, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    set_domain(session_factory, SHOP, tag_score=-60.0, subject_tag="[SHOP-SPAM]")
    _, code, _ = send(relay_ingress, [BUYER], for_buyer(message()))
    assert code == 250
    [copy] = queued(session_factory, tmp_path / "spool")
    head = copy.split(b"\r\n\r\n", 1)[0].decode()
    assert "X-Spam-Status: Yes" in head and "Subject: [SHOP-SPAM] Lunch" in head
    assert "Subject: Lunch" not in head
    assert copy.count(b"Hello, this is an ordinary message.") == 1


def test_relay_mail_when_the_scanner_is_down_is_deferred(
    scan_start: Callable[..., IngressThread],
    session_factory: sessionmaker[Session],
    tmp_path: Path,
) -> None:
    add_shop(session_factory)
    ingress = scan_start(spool_root=tmp_path / "spool", scan_rspamd_address="127.0.0.1:1")
    _, code, text = send(ingress, [BUYER], for_buyer(message()))
    assert code == 451 and text.startswith("4.7.1"), text
    assert rows(session_factory) == [] and spool_files(tmp_path / "spool") == []


def test_large_relay_mail_with_a_rewritten_head_is_queued_once(
    relay_ingress: IngressThread, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    """Past the in-memory limit the body spills to disk; a scan that rewrites the header
    section (forged results removed) must not leave the old head in the queued copy."""
    set_domain(session_factory, SHOP, tag_score=-60.0)
    line = "0123456789" * 7 + "\r\n"
    body = line * 5000  # about 360 KiB
    forged = "Authentication-Results: mx.mailhost.test; dkim=pass\r\n"
    _, code, text = send(relay_ingress, [BUYER], for_buyer(message(body, extra=forged)))
    assert code == 250, text
    [copy] = queued(session_factory, tmp_path / "spool")
    head, rest = copy.split(b"\r\n\r\n", 1)
    assert rest == body.encode()
    assert b"dkim=pass" not in head and head.count(b"Subject: [SPAM] Lunch") == 1
    assert copy.count(b"Message-ID: <lunch-1@sender.example>") == 1
