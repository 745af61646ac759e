"""Multidrop (a domain mailbox): a catch-all mailbox gets one copy per envelope recipient, each
naming its recipient in Delivered-To: and X-Original-To:, and the real fetchmail in multidrop
mode (``envelope Delivered-To``, ``localdomains``) sorts the copies to local users over POP3."""

from __future__ import annotations

import os
import shutil
import smtplib
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MaildirStore
from app.services import domains
from app.services.audit import CLI_ACTOR
from tests.factories import DEFAULT_PASSWORD, make_alias, make_mailbox
from tests.protocol.pop3_helpers import TIMEOUT, in_ci, ref, running_server
from tests.protocol.smtp_helpers import IngressThread, new_messages

DOMAIN = "multi.example"
BOX = f"box@{DOMAIN}"  # the domain mailbox: catch-all of multi.example
NAMED = f"sales@{DOMAIN}"  # an alias -> the domain mailbox (not a catch-all delivery)
RECIPIENTS = [f"alice@{DOMAIN}", f"Bob@{DOMAIN}", f"carol@{DOMAIN}"]
MESSAGE = (
    b"From: Sender <sender@example.org>\r\n"
    b"To: staff@multi.example\r\n"
    b"Subject: multidrop\r\n"
    b"Message-ID: <multidrop-1@example.org>\r\n"
    b"\r\n"
    b"one message, three envelope recipients\r\n"
)


def require_fetchmail() -> str:
    """Path of fetchmail; a skip locally when missing, a failure in CI (it must be installed)."""
    path = shutil.which("fetchmail")
    if path is None:
        if in_ci():
            pytest.fail(
                "fetchmail is not installed (CI must install it: apt-get install fetchmail)"
            )
        pytest.skip("fetchmail is not installed")
    return path


@pytest.fixture
def multidrop_world(session_factory: sessionmaker[Session]) -> None:
    with transaction(session_factory) as s:
        make_mailbox(s, BOX, password=DEFAULT_PASSWORD)
        make_mailbox(s, f"direct@{DOMAIN}", password=DEFAULT_PASSWORD)
        make_alias(s, NAMED, [BOX])
        domain = domains.get_domain_by_name(s, name=DOMAIN)
        domains.set_catchall(s, actor=CLI_ACTOR, domain_id=domain.id, target=BOX)


def _send(port: int, recipients: list[str], message: bytes = MESSAGE) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=TIMEOUT) as smtp:
        assert smtp.sendmail("sender@example.org", recipients, message) == {}


def _head(message: bytes) -> list[bytes]:
    """The header lines up to the Received header (the block the ingress puts on top)."""
    lines = message.split(b"\n")
    return lines[: next(i for i, line in enumerate(lines) if line.startswith(b"Received:"))]


def test_one_copy_per_envelope_recipient_with_its_address_on_top(
    multidrop_world: None, smtp_start: Callable[..., IngressThread], store: MaildirStore
) -> None:
    ingress = smtp_start()
    # Three catch-all recipients, one of them twice (different case): three copies. The alias
    # and the domain mailbox's own address reach the same mailbox the ordinary way: they
    # share one copy that names the mailbox, as before.
    _send(ingress.port, [*RECIPIENTS, f"ALICE@{DOMAIN}", NAMED, BOX])
    copies = new_messages(store, BOX)
    heads = sorted(_head(m) for m in copies)
    assert heads == sorted(
        [
            [
                b"Return-Path: <sender@example.org>",
                f"Delivered-To: {r}".encode(),
                f"X-Original-To: {r}".encode(),
            ]
            for r in RECIPIENTS
        ]
        + [[b"Return-Path: <sender@example.org>", f"Delivered-To: {BOX}".encode()]]
    )
    for copy in copies:
        assert copy.endswith(MESSAGE.replace(b"\r\n", b"\n"))
    # A mailbox of the domain is not touched by the catch-all.
    _send(ingress.port, [f"direct@{DOMAIN}"])
    [direct] = new_messages(store, f"direct@{DOMAIN}")
    assert _head(direct) == [
        b"Return-Path: <sender@example.org>",
        b"Delivered-To: direct@multi.example",
    ]


# Two ways a site runs fetchmail (README, "A domain mailbox"): ``aka`` makes the domain
# fetchmail's own, so it maps each envelope recipient's local part to a local user; with
# ``localdomains`` it passes the whole address on (to a local MTA that knows the domain).
FETCHMAIL_SETUPS = {
    "aka": (f"aka {DOMAIN}", " is alice bob carol here", ["alice", "bob", "carol"]),
    "localdomains": (f"localdomains {DOMAIN}", " is * here", sorted(RECIPIENTS)),
}


@pytest.mark.parametrize("setup", sorted(FETCHMAIL_SETUPS))
def test_fetchmail_multidrop_sorts_the_copies_to_local_users(
    setup: str,
    multidrop_world: None,
    settings: Settings,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    smtp_start: Callable[..., IngressThread],
    tmp_path: Path,
) -> None:
    fetchmail = require_fetchmail()
    domain_line, users_clause, expected_users = FETCHMAIL_SETUPS[setup]
    ingress = smtp_start()
    _send(ingress.port, RECIPIENTS)
    assert len(new_messages(store, BOX)) == 3

    # The customer's site: fetchmail hands each message to an MDA that files it under the
    # local user fetchmail chose (%T), one directory per user; no local MTA needed.
    site = tmp_path / "site"
    inboxes = site / "inboxes"
    inboxes.mkdir(parents=True)
    mda = site / "mda.sh"
    mda.write_text(
        '#!/bin/sh\nset -e\nmkdir -p "$INBOXES/$1"\ncat > "$(mktemp "$INBOXES/$1/msg.XXXXXX")"\n'
    )
    mda.chmod(0o755)
    with running_server(settings, session_factory=session_factory, store=store) as pop3:
        rcfile = site / "fetchmailrc"
        rcfile.write_text(
            f"poll 127.0.0.1 service {pop3.port} protocol pop3 timeout 10\n"
            f"    {domain_line}\n"
            '    envelope "Delivered-To"\n'
            "    no dns\n"
            f'  user "{BOX}" there with password "{DEFAULT_PASSWORD}"'
            f"{users_clause}\n"
            f'    options fetchall sslproto "" mda "{mda} %T"\n'
        )
        rcfile.chmod(stat.S_IRUSR | stat.S_IWUSR)  # fetchmail refuses a readable rcfile
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(site),
            "FETCHMAILHOME": str(site),
            "INBOXES": str(inboxes),
            "LC_ALL": "C",
        }
        run = subprocess.run(
            [fetchmail, "-f", str(rcfile), "--nodetach", "--nosyslog", "-v"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert run.returncode == 0, run.stdout + run.stderr
    sorted_to = {p.name: [f.read_bytes() for f in p.iterdir()] for p in inboxes.iterdir()}
    assert sorted(sorted_to) == expected_users, run.stdout + run.stderr
    for user, messages in sorted_to.items():
        [message] = messages
        assert b"Subject: multidrop" in message
        envelope = user if "@" in user else f"{user}@{DOMAIN}"
        assert f"\nDelivered-To: {envelope}\n".lower().encode() in message.lower()
    # fetchmail deleted what it fetched (no keep): the domain mailbox is empty.
    assert new_messages(store, BOX) == []
    assert not list((store.mailbox_path(ref(BOX)) / "cur").iterdir())
