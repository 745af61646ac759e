"""Removal after deletions: the Maildirs a deletion frees, and one policy when files stay."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy.orm import Session

from app.maildir import MailboxRef, MaildirStore
from app.services import removal
from tests.factories import make_customer, make_domain, make_mailbox
from tests.fs_helpers import undeletable


def _seed(session: Session) -> dict[str, int]:
    acme = make_customer(session, "Acme")
    other = make_customer(session, "Other")
    one = make_domain(session, "one.example", acme)
    two = make_domain(session, "two.example", acme)
    make_domain(session, "other.example", other)
    ids = {
        "a1": make_mailbox(session, "a@one.example").id,
        "b1": make_mailbox(session, "b@one.example").id,
        "a2": make_mailbox(session, "a@two.example").id,
        "x": make_mailbox(session, "x@other.example").id,
    }
    return {"acme": acme.id, "other": other.id, "one": one.id, "two": two.id, **ids}


def test_refs_name_exactly_the_maildirs_a_deletion_frees(session: Session) -> None:
    ids = _seed(session)
    one_a, one_b = MailboxRef("one.example", "a"), MailboxRef("one.example", "b")
    two_a = MailboxRef("two.example", "a")
    assert removal.refs_of_mailbox(session, mailbox_id=ids["b1"]) == [one_b]
    assert removal.refs_of_mailbox(session, mailbox_id=999_999) == []
    assert removal.refs_of_domain(session, domain_id=ids["one"]) == [one_a, one_b]
    assert removal.refs_of_customer(session, customer_id=ids["acme"]) == [one_a, one_b, two_a]
    assert removal.refs_of_customer(session, customer_id=ids["other"]) == [
        MailboxRef("other.example", "x")
    ]


def test_mailbox_ref_of_a_row(session: Session) -> None:
    mailbox = make_mailbox(session, "Alice@Hosted.Example")
    assert MailboxRef.of(mailbox) == MailboxRef("hosted.example", "alice")


def test_remove_maildirs_removes_every_maildir(store: MaildirStore) -> None:
    refs = [MailboxRef("one.example", "a"), MailboxRef("one.example", "b")]
    store.deliver([(refs[0], [b"Subject: x\n\nx\n"])])  # b never received mail: no Maildir
    assert removal.remove_maildirs(store=store, refs=refs) == []
    assert not store.mailbox_path(refs[0]).exists()


def test_a_maildir_that_stays_is_a_logged_warning_and_the_rest_still_go(
    store: MaildirStore, caplog: pytest.LogCaptureFixture
) -> None:
    stuck, fine = MailboxRef("one.example", "stuck"), MailboxRef("one.example", "fine")
    store.deliver([(stuck, [b"Subject: x\n\nx\n"]), (fine, [b"Subject: y\n\ny\n"])])
    path = store.mailbox_path(stuck)
    with caplog.at_level(logging.ERROR, logger="app.services.removal"), undeletable(path):
        leftovers = removal.remove_maildirs(store=store, refs=[stuck, fine])
    assert [leftover.address for leftover in leftovers] == ["stuck@one.example"]
    [leftover] = leftovers
    assert "could not be removed" in leftover.message and str(path) not in leftover.message
    assert str(path) in leftover.detail
    assert str(path) in caplog.text and "stuck@one.example" in caplog.text
    assert path.exists() and not store.mailbox_path(fine).exists()
