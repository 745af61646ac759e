"""Per-domain scanning policy and allow/block lists at the ingress, with the real scanners."""

from __future__ import annotations

import smtplib
from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.maildir import MaildirStore
from app.services import domains, scan_policy
from app.services.audit import CLI_ACTOR
from app.services.scan_policy import PolicyChange
from tests.protocol.smtp_helpers import ADDRESSES, IngressThread, new_messages
from tests.scanning.test_ingress_scanning import SENDER, head_of, message, sender_domain

USER = ADDRESSES["user"]  # hosted.example
BUCKET = ADDRESSES["catchall_box"]  # catchall.example
__all__ = ["sender_domain"]  # the module fixture publishing sender.example's SPF


def set_domain(factory: sessionmaker[Session], name: str, **fields: object) -> None:
    with transaction(factory) as s:
        domain = domains.get_domain_by_name(s, name=name)
        scan_policy.set_override(
            s,
            actor=CLI_ACTOR,
            scope="domain",
            scope_id=domain.id,
            change=PolicyChange(**fields),  # type: ignore[arg-type]
        )


def add_entry(factory: sessionmaker[Session], name: str, list_name: str, value: str) -> None:
    with transaction(factory) as s:
        domain = domains.get_domain_by_name(s, name=name)
        scan_policy.add_list_entry(
            s,
            actor=CLI_ACTOR,
            domain_id=domain.id,
            list_name=list_name,
            value=value,  # type: ignore[arg-type]
        )


def send_to(ingress: IngressThread, *rcpts: str) -> tuple[list[int], int, str]:
    with smtplib.SMTP(
        "127.0.0.1", ingress.port, local_hostname="client.sender.example", timeout=30
    ) as client:
        client.ehlo()
        client.mail(SENDER)
        codes = [client.rcpt(r)[0] for r in rcpts]
        if 250 not in codes:
            return codes, 0, ""
        code, text = client.data(message())
        return codes, code, text.decode()


@pytest.fixture
def ingress(scan_start: Callable[..., IngressThread]) -> IngressThread:
    return scan_start()


def test_a_domains_own_reject_threshold_applies_to_its_mail_only(
    ingress: IngressThread, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    set_domain(session_factory, "hosted.example", reject_score=-50.0, tag_score=-60.0)
    _, code, text = send_to(ingress, USER)
    assert code == 550 and "spam score" in text
    assert new_messages(store, USER) == []
    _, code, _ = send_to(ingress, BUCKET)  # catchall.example keeps the platform default
    assert code == 250 and len(new_messages(store, BUCKET)) == 1


def test_mixed_recipients_the_most_lenient_reject_and_per_copy_tags(
    ingress: IngressThread, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    set_domain(session_factory, "hosted.example", reject_score=-50.0, tag_score=-60.0)
    _, code, _ = send_to(ingress, USER, BUCKET)
    assert code == 250  # catchall.example would not reject: stored for both
    assert "X-Spam-Status: Yes" in head_of(new_messages(store, USER)[0])
    assert "Subject: [SPAM] Lunch" in head_of(new_messages(store, USER)[0])
    assert "X-Spam-Status: No" in head_of(new_messages(store, BUCKET)[0])
    assert "Subject: Lunch" in head_of(new_messages(store, BUCKET)[0])


@pytest.mark.parametrize("entry", [SENDER, "sender.example", "127.0.0.0/8"])
def test_allow_list_overrides_a_reject(
    ingress: IngressThread,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    entry: str,
) -> None:
    set_domain(session_factory, "hosted.example", reject_score=-50.0, tag_score=-60.0)
    add_entry(session_factory, "hosted.example", "allow", entry)
    _, code, text = send_to(ingress, USER)
    assert code == 250, text
    head = head_of(new_messages(store, USER)[0])
    assert "X-Spam-Status" not in head and "Subject: Lunch" in head
    assert "Authentication-Results: mx.mailhost.test; none" in head  # rspamd not asked


def test_block_list_refuses_the_recipient_at_rcpt(
    ingress: IngressThread, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    add_entry(session_factory, "hosted.example", "block", "sender.example")
    add_entry(session_factory, "hosted.example", "allow", SENDER)  # the block wins
    codes, code, _ = send_to(ingress, USER, BUCKET)
    assert codes == [550, 250] and code == 250
    assert new_messages(store, USER) == [] and len(new_messages(store, BUCKET)) == 1
