"""Greylisting per domain with rspamd's greylist module and a real Redis (tests/scanners.py):
on, the first attempt of a suspect message is deferred 451 4.7.1 and a retry after the
greylisting timeout is accepted; off, the same message is accepted at once and rspamd writes
no greylisting record at all (our request turns the module off: ``Settings`` with the
module's symbols in ``symbols_disabled``, app/scanning/scanner.py)."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.maildir import MaildirStore
from tests.conftest import in_ci
from tests.protocol.smtp_helpers import ADDRESSES, IngressThread, new_messages
from tests.scanners import GREYLIST_TIMEOUT, SUSPECT_HEADER, Rspamd, redis_keys
from tests.scanning.test_ingress_scanning import SENDER, message, sender_domain
from tests.scanning.test_policy_scanning import set_domain

USER = ADDRESSES["user"]  # hosted.example
BUCKET = ADDRESSES["catchall_box"]  # catchall.example
__all__ = ["sender_domain"]  # the module fixture publishing sender.example's SPF


@pytest.fixture
def greylist_prefix(rspamd: Rspamd) -> str:
    """The Redis key prefix of the test rspamd's greylist module (a Redis is required)."""
    if rspamd.greylist_prefix is None:
        why = "no Redis on 127.0.0.1:6379 when rspamd started: greylisting is not configured"
        if in_ci():
            pytest.fail(f"{why} (CI=true: a missing Redis is a failure)")
        pytest.skip(why)
    return rspamd.greylist_prefix


def suspect(tag: str, rcpt: str = USER) -> bytes:
    """A message rspamd scores above its greylist action threshold; ``tag`` makes its body
    (and so its greylisting record) unique to the test."""
    data = message(f"A message for the greylisting test {tag}.\r\n", extra=SUSPECT_HEADER + "\r\n")
    return data.replace(f"To: <{USER}>".encode(), f"To: <{rcpt}>".encode(), 1)


def sender(tag: str) -> str:
    """An envelope sender of its own per test: rspamd's greylisting record is per (sender,
    recipient, client network) as well as per body, and a triplet that passed in one test
    would let the next test's message through (not a "+tag": rspamd drops those for it)."""
    return SENDER.replace("@", f".{tag}@")


def send(ingress: IngressThread, data: bytes, tag: str) -> tuple[int, str]:
    with smtplib.SMTP(
        "127.0.0.1", ingress.port, local_hostname="client.sender.example", timeout=30
    ) as client:
        client.ehlo()
        client.mail(sender(tag))
        code, _ = client.rcpt(USER)
        assert code == 250
        code, text = client.data(data)
        return code, text.decode()


def lenient(factory: sessionmaker[Session], domain: str, *, greylisting: bool) -> None:
    """Thresholds far above the suspect message's score: only greylisting can defer it."""
    set_domain(factory, domain, reject_score=100.0, tag_score=50.0, greylisting=greylisting)


def test_greylisting_on_defers_the_first_attempt_and_accepts_the_retry(
    scan_start: Callable[..., IngressThread],
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    greylist_prefix: str,
) -> None:
    ingress = scan_start()
    lenient(session_factory, "hosted.example", greylisting=True)
    data = suspect("on")
    before = len(redis_keys(greylist_prefix))
    code, text = send(ingress, data, "on")
    assert code == 451 and text.startswith("4.7.1 Message not accepted now"), text
    assert new_messages(store, USER) == []
    assert len(redis_keys(greylist_prefix)) == before + 2  # the triplet's and the body's
    code, text = send(ingress, data, "on")  # too early: still deferred
    assert code == 451, text
    assert new_messages(store, USER) == []
    time.sleep(GREYLIST_TIMEOUT + 0.5)  # the greylisting timeout itself: what a sender waits
    code, text = send(ingress, data, "on")
    assert code == 250, text
    [copy] = new_messages(store, USER)
    assert b"A message for the greylisting test on." in copy


def test_greylisting_off_accepts_the_first_attempt_and_records_nothing(
    scan_start: Callable[..., IngressThread],
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    greylist_prefix: str,
) -> None:
    ingress = scan_start()
    lenient(session_factory, "hosted.example", greylisting=False)
    before = len(redis_keys(greylist_prefix))
    code, text = send(ingress, suspect("off"), "off")
    assert code == 250, text
    assert len(new_messages(store, USER)) == 1
    assert len(redis_keys(greylist_prefix)) == before


def test_mixed_recipients_greylist_only_when_every_domain_wants_it(
    scan_start: Callable[..., IngressThread],
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    greylist_prefix: str,
) -> None:
    ingress = scan_start()
    lenient(session_factory, "hosted.example", greylisting=True)
    lenient(session_factory, "catchall.example", greylisting=False)
    with smtplib.SMTP(
        "127.0.0.1", ingress.port, local_hostname="client.sender.example", timeout=30
    ) as client:
        client.ehlo()
        client.mail(sender("mixed"))
        assert client.rcpt(USER)[0] == 250 and client.rcpt(BUCKET)[0] == 250
        code, text = client.data(suspect("mixed"))
    assert code == 250, text
    assert len(new_messages(store, USER)) == 1 and len(new_messages(store, BUCKET)) == 1
