"""Abuse limits against a real ingress: connections per address and in total, idle timeout,
DATA deadline, junk commands, early talkers, recipients per transaction, graceful stop."""

from __future__ import annotations

import time
from collections.abc import Callable

from app.maildir import MaildirStore
from tests.protocol.smtp_helpers import ADDRESSES, IngressThread, RawClient, new_messages


def _wait_for_connections(server: IngressThread, count: int) -> None:
    deadline = time.monotonic() + 5
    while server.connections() != count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.connections() == count


def test_smtp_connections_per_address(smtp_start: Callable[..., IngressThread]) -> None:
    server = smtp_start(smtp_max_connections_per_ip=2)
    first, second = RawClient(server.port), RawClient(server.port)
    third = RawClient(server.port)
    assert third.greeting.startswith("421 4.7.0 ")
    assert third.closed_by_server()
    first.close()
    _wait_for_connections(server, 1)
    again = RawClient(server.port)  # a slot is free again
    assert again.greeting.startswith("220 ")
    for c in (second, third, again):
        c.close()


def test_smtp_connections_in_total(smtp_start: Callable[..., IngressThread]) -> None:
    server = smtp_start(smtp_max_connections=1)
    first = RawClient(server.port)
    second = RawClient(server.port)
    assert second.greeting.startswith("421 4.7.0 ")
    first.close()
    second.close()


def test_smtp_idle_timeout(smtp_start: Callable[..., IngressThread]) -> None:
    server = smtp_start(smtp_idle_timeout=0.5)
    client = RawClient(server.port)
    client.cmd("EHLO client.example")
    assert client.reply().startswith("421 4.4.2 ")
    assert client.closed_by_server()
    client.close()


def test_smtp_data_deadline_drops_partial_message(
    smtp_world: None, smtp_start: Callable[..., IngressThread], store: MaildirStore
) -> None:
    server = smtp_start(smtp_data_timeout=0.7, smtp_idle_timeout=30)
    client = RawClient(server.port)
    client.cmd("EHLO client.example")
    client.cmd("MAIL FROM:<a@remote.example>")
    client.cmd("RCPT TO:<user@hosted.example>")
    assert client.cmd("DATA").startswith("354")
    for _ in range(3):  # trickling keeps an idle timer alive, not the DATA deadline
        client.send(b"Subject: slow\r\n")
        time.sleep(0.3)
    assert client.reply().startswith("421 4.4.2 ")
    assert client.closed_by_server()
    client.close()
    assert new_messages(store, ADDRESSES["user"]) == []


def test_smtp_junk_command_limit(smtp_start: Callable[..., IngressThread]) -> None:
    server = smtp_start(smtp_max_junk_commands=3)
    client = RawClient(server.port)
    client.cmd("EHLO client.example")
    # NOOP no longer counts here: it has its own limit (smtp_max_noop_commands, tested below).
    for verb in ("FOO", "BAR", "NOOP", "QUX"):
        assert client.cmd(verb)[:1] in "25"
    assert client.cmd("BAZ").startswith("500 5.5.2 ")
    assert client.reply().startswith("421 4.7.0 ")
    assert client.closed_by_server()
    client.close()


def test_smtp_rset_between_many_transactions_is_not_junk(
    smtp_world: None, smtp_start: Callable[..., IngressThread], store: MaildirStore
) -> None:
    # Issue 16: a big sender's RSET after each transaction (here: ones it gave up on) used to
    # count as a junk command, and the 21st closed the connection. The default now lets 100
    # NOOP/RSET/VRFY through without a delivered message (Postfix's smtpd_junk_command_limit).
    server = smtp_start()
    client = RawClient(server.port)
    client.cmd("EHLO client.example")
    for _ in range(100):
        assert client.cmd("MAIL FROM:<a@remote.example>").startswith("250 ")
        assert client.cmd(f"RCPT TO:<{ADDRESSES['user']}>").startswith("250 ")
        assert client.cmd("RSET").startswith("250 ")
    assert client.cmd("RSET").startswith("421 4.7.0 ")
    assert client.closed_by_server()
    client.close()
    assert new_messages(store, ADDRESSES["user"]) == []


def test_smtp_noop_limit_counts_noop_rset_vrfy_and_a_message_resets_it(
    smtp_world: None, smtp_start: Callable[..., IngressThread], store: MaildirStore
) -> None:
    server = smtp_start(smtp_max_noop_commands=3, smtp_max_junk_commands=1)
    client = RawClient(server.port)
    client.cmd("EHLO client.example")
    assert [client.cmd(c)[:3] for c in ("NOOP", "RSET", "VRFY someone")] == ["250", "250", "252"]
    client.cmd("MAIL FROM:<a@remote.example>")
    client.cmd(f"RCPT TO:<{ADDRESSES['user']}>")
    assert client.cmd("DATA").startswith("354 ")
    assert client.cmd("Subject: kept\r\n\r\nbody\r\n.").startswith("250 ")
    # The delivered message reset the count: three more pass, the fourth closes.
    assert [client.cmd(c)[:3] for c in ("RSET", "NOOP", "RSET")] == ["250", "250", "250"]
    assert client.cmd("NOOP").startswith("421 4.7.0 ")
    assert client.closed_by_server()
    client.close()
    assert len(new_messages(store, ADDRESSES["user"])) == 1


def test_smtp_dictionary_attack_counts_as_junk(
    smtp_world: None, smtp_start: Callable[..., IngressThread]
) -> None:
    server = smtp_start(smtp_max_junk_commands=2)
    client = RawClient(server.port)
    client.cmd("EHLO client.example")
    client.cmd("MAIL FROM:<a@remote.example>")
    replies = [client.cmd(f"RCPT TO:<guess{i}@hosted.example>") for i in range(3)]
    assert [r[:9] for r in replies] == ["550 5.1.1"] * 3
    assert client.reply().startswith("421 4.7.0 ")
    client.close()


def test_smtp_early_talker_is_refused(smtp_start: Callable[..., IngressThread]) -> None:
    server = smtp_start(greet_delay=0.3)
    client = RawClient(server.port, read_greeting=False)
    client.send("EHLO hasty.example")
    assert client.reply().startswith("554 5.5.1 ")
    assert client.closed_by_server()
    client.close()


def test_smtp_max_recipients_is_configurable(
    smtp_world: None, smtp_start: Callable[..., IngressThread]
) -> None:
    server = smtp_start(smtp_max_recipients=2)
    client = RawClient(server.port)
    client.cmd("EHLO client.example")
    client.cmd("MAIL FROM:<a@remote.example>")
    assert client.cmd("RCPT TO:<user@hosted.example>").startswith("250 2.1.5")
    assert client.cmd("RCPT TO:<other@hosted.example>").startswith("250 2.1.5")
    assert client.cmd("RCPT TO:<team@hosted.example>").startswith("452 4.5.3 ")
    client.close()


def test_smtp_stop_closes_idle_sessions_with_421(smtp_start: Callable[..., IngressThread]) -> None:
    server = smtp_start()
    client = RawClient(server.port)
    client.cmd("EHLO client.example")
    server.stop()
    assert client.reply().startswith("421 4.3.2 ")
    client.close()
