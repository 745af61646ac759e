"""The POP3 server over real sockets: poplib, curl and raw clients against a server on port 0."""

from __future__ import annotations

import datetime as dt
import poplib
import ssl
import subprocess
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

import app.maildir_files as maildir_module
from app.config import Settings
from app.db import transaction
from app.maildir import MaildirStore
from app.models import LoginCounter, Mailbox, MaildropLease
from app.services import stats
from pop3_service.encoding import BLOCK_SIZE
from tests.factories import DEFAULT_PASSWORD, seed_mailbox
from tests.protocol.pop3_helpers import (
    TIMEOUT,
    RawClient,
    ServerThread,
    client_tls_context,
    deliver,
    ref,
    reference_wire,
    require_curl,
    require_mpop,
    running_server,
    to_wire,
)

ALICE = "alice@a.example"
BOB = "bob@b.example"
AUTH_FAILED = b"-ERR [AUTH] Authentication failed"

MSG_PLAIN = b"From: x@y.example\nSubject: one\n\nHello\n"
MSG_DOTS = b"From: x@y.example\nSubject: dots\n\n.starts with a dot\nbody\n.\nnot the end\n..\n"
MSG_NO_NEWLINE = b"Subject: three\n\nno final newline"


@pytest.fixture
def world(session_factory: sessionmaker[Session]) -> dict[str, int]:
    return {
        ALICE: seed_mailbox(session_factory, ALICE),
        BOB: seed_mailbox(session_factory, BOB),
    }


@pytest.fixture
def start(
    settings: Settings,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
    world: dict[str, int],
) -> Iterator[Callable[..., ServerThread]]:
    """Start a server with settings overrides: ``start(pop3_idle_timeout=0.5)``."""
    started: list[ServerThread] = []

    def _start(
        base: Settings | None = None,
        *,
        server_kwargs: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> ServerThread:
        cfg = (base or settings).model_copy(update=overrides)
        thread = ServerThread(
            cfg, session_factory=session_factory, store=store, **(server_kwargs or {})
        )
        started.append(thread.start())
        return thread

    yield _start
    for thread in started:
        thread.stop()


@pytest.fixture
def server(start: Callable[..., ServerThread]) -> ServerThread:
    return start()


@pytest.fixture
def server_tls(start: Callable[..., ServerThread], tls_settings: Settings) -> ServerThread:
    return start(tls_settings)


def pop(port: int) -> poplib.POP3:
    return poplib.POP3("127.0.0.1", port, timeout=TIMEOUT)


def clear_throttle(session_factory: sessionmaker[Session]) -> None:
    with transaction(session_factory) as db:
        db.execute(delete(LoginCounter))


# ------------------------------------------------------------------------------ golden path
def test_golden_path_with_poplib(server: ServerThread, store: MaildirStore) -> None:
    infos = deliver(store, ALICE, MSG_PLAIN, MSG_DOTS, MSG_NO_NEWLINE)
    client = pop(server.port)
    assert client.getwelcome().startswith(b"+OK mx.test.example")
    client.user(ALICE)
    client.pass_(DEFAULT_PASSWORD)
    sizes = [len(to_wire(m)) for m in (MSG_PLAIN, MSG_DOTS, MSG_NO_NEWLINE)]
    assert client.stat() == (3, sum(sizes))
    _, listing, _ = client.list()
    assert listing == [f"{i + 1} {s}".encode() for i, s in enumerate(sizes)]
    _, uids, _ = client.uidl()
    assert uids == [f"{i + 1} {info.uid}".encode() for i, info in enumerate(infos)]
    for number, original in enumerate((MSG_PLAIN, MSG_DOTS, MSG_NO_NEWLINE), start=1):
        _, lines, _ = client.retr(number)
        assert b"\n".join(lines) == original.rstrip(b"\n")
    _, top, _ = client.top(2, 1)
    assert top == [b"From: x@y.example", b"Subject: dots", b"", b".starts with a dot"]
    for number in (1, 2, 3):
        client.dele(number)
    assert client.quit().startswith(b"+OK")
    assert store.list_messages(ref(ALICE)) == []


def test_retr_sends_exact_bytes_with_dot_stuffing(
    server: ServerThread, store: MaildirStore
) -> None:
    deliver(store, ALICE, MSG_DOTS, MSG_NO_NEWLINE)
    client = RawClient(server.port)
    assert client.login(ALICE, DEFAULT_PASSWORD).startswith(b"+OK Logged in")
    assert client.cmd("RETR 1") == f"+OK {len(to_wire(MSG_DOTS))} octets".encode()
    assert client.multiline_raw() == (
        b"From: x@y.example\r\nSubject: dots\r\n\r\n..starts with a dot\r\nbody\r\n..\r\n"
        b"not the end\r\n...\r\n.\r\n"
    )
    assert client.cmd("RETR 2").startswith(b"+OK")
    assert client.multiline_raw() == b"Subject: three\r\n\r\nno final newline\r\n.\r\n"
    assert client.cmd("QUIT").startswith(b"+OK")
    client.close()


def test_pipelined_commands_are_answered_in_order(
    server: ServerThread, store: MaildirStore
) -> None:
    deliver(store, ALICE, MSG_PLAIN, MSG_PLAIN)
    client = RawClient(server.port)
    client.login(ALICE, DEFAULT_PASSWORD)
    client.send(b"STAT\r\nRETR 1\r\nDELE 1\r\nRETR 2\r\nDELE 2\r\nNOOP\r\nQUIT\r\n")
    assert client.line() == f"+OK 2 {2 * len(to_wire(MSG_PLAIN))}".encode()
    for number in (1, 2):
        assert client.line().startswith(b"+OK")
        assert client.multiline_raw() == to_wire(MSG_PLAIN) + b".\r\n"
        assert client.line() == f"+OK Message {number} deleted".encode()
    assert client.line() == b"+OK"
    assert client.line() == b"+OK mx.test.example POP3 server signing off (2 deleted)"
    assert client.at_eof()
    assert store.list_messages(ref(ALICE)) == []


# ------------------------------------------------------------------------------ deletion rules
def test_disconnect_without_quit_deletes_nothing(server: ServerThread, store: MaildirStore) -> None:
    deliver(store, ALICE, MSG_PLAIN, MSG_DOTS)
    client = RawClient(server.port)
    client.login(ALICE, DEFAULT_PASSWORD)
    assert client.cmd("DELE 1").startswith(b"+OK")
    assert client.cmd("DELE 2").startswith(b"+OK")
    client.close()  # no QUIT
    # The lease is released when the server notices; then the next session sees both messages.
    deadline = time.monotonic() + TIMEOUT
    while True:
        again = RawClient(server.port)
        reply = again.login(ALICE, DEFAULT_PASSWORD)
        if reply.startswith(b"+OK") or time.monotonic() > deadline:
            break
        again.close()
        time.sleep(0.05)
    assert (
        reply
        == (
            f"+OK Logged in, maildrop has 2 messages "
            f"({len(to_wire(MSG_PLAIN)) + len(to_wire(MSG_DOTS))} octets)"
        ).encode()
    )
    assert again.cmd("QUIT").startswith(b"+OK")
    assert len(store.list_messages(ref(ALICE))) == 2


def test_idle_timeout_closes_and_deletes_nothing(
    start: Callable[..., ServerThread], store: MaildirStore
) -> None:
    server = start(pop3_idle_timeout=0.5)
    deliver(store, ALICE, MSG_PLAIN)
    client = RawClient(server.port)
    client.login(ALICE, DEFAULT_PASSWORD)
    assert client.cmd("DELE 1").startswith(b"+OK")
    assert client.line() == b"-ERR Disconnected for inactivity"
    assert client.at_eof()
    assert len(store.list_messages(ref(ALICE))) == 1


def test_shutdown_deletes_nothing(start: Callable[..., ServerThread], store: MaildirStore) -> None:
    server = start()
    deliver(store, ALICE, MSG_PLAIN)
    client = RawClient(server.port)
    client.login(ALICE, DEFAULT_PASSWORD)
    assert client.cmd("DELE 1").startswith(b"+OK")
    server.stop()
    assert client.line() == b"-ERR [SYS/TEMP] Server shutting down, try again"
    assert client.at_eof()
    assert len(store.list_messages(ref(ALICE))) == 1


class FailingExpungeStore(MaildirStore):
    def expunge(self, mailbox: Any, uids: Any) -> int:
        raise OSError("disk I/O error")


def test_failed_expunge_answers_sys_temp_and_loses_nothing(
    settings: Settings, session_factory: sessionmaker[Session], world: dict[str, int]
) -> None:
    store = FailingExpungeStore(settings.maildir_root, hostname=settings.hostname)
    deliver(store, ALICE, MSG_PLAIN)
    with running_server(settings, session_factory=session_factory, store=store) as server:
        client = RawClient(server.port)
        client.login(ALICE, DEFAULT_PASSWORD)
        client.cmd("DELE 1")
        assert client.cmd("QUIT") == (
            b"-ERR [SYS/TEMP] Some deleted messages were not removed, try again"
        )
        assert client.at_eof()
    assert len(store.list_messages(ref(ALICE))) == 1


# ------------------------------------------------------------------------------ locking
@pytest.mark.parametrize("mode", ["auto", "lease"])
def test_second_session_on_one_mailbox_is_refused_until_the_first_ends(
    start: Callable[..., ServerThread],
    session_factory: sessionmaker[Session],
    world: dict[str, int],
    mode: str,
) -> None:
    server = start(pop3_maildrop_lock=mode)
    leases = mode == "lease"
    first = RawClient(server.port)
    assert first.login(ALICE, DEFAULT_PASSWORD).startswith(b"+OK")
    second = RawClient(server.port)
    assert second.login(ALICE, DEFAULT_PASSWORD) == (
        b"-ERR [IN-USE] Maildrop is locked by another session, try again later"
    )
    with transaction(session_factory) as db:
        lease = db.get(MaildropLease, world[ALICE])
        if leases:
            assert lease is not None and lease.expires_at > dt.datetime.now(dt.UTC)
        else:  # the lock dies with the process: no row to outlive it
            assert lease is None
    # Bob is not affected by Alice's lock.
    other = RawClient(server.port)
    assert other.login(BOB, DEFAULT_PASSWORD).startswith(b"+OK")
    assert first.cmd("QUIT").startswith(b"+OK")
    assert first.at_eof()
    assert second.login(ALICE, DEFAULT_PASSWORD).startswith(b"+OK Logged in")
    with transaction(session_factory) as db:
        assert (db.get(MaildropLease, world[ALICE]) is not None) is leases
    second.cmd("QUIT")
    other.cmd("QUIT")
    second.at_eof()
    with transaction(session_factory) as db:
        assert db.scalars(select(MaildropLease)).all() == []


def test_a_lapsed_lease_is_taken_over_and_a_live_one_is_not(
    start: Callable[..., ServerThread],
    session_factory: sessionmaker[Session],
    world: dict[str, int],
) -> None:
    server = start(pop3_maildrop_lock="lease")
    now = dt.datetime.now(dt.UTC)
    with transaction(session_factory) as db:
        db.add(
            MaildropLease(
                mailbox_id=world[ALICE],
                holder="crashed-host:1:x",
                acquired_at=now,
                expires_at=now - dt.timedelta(seconds=1),
            )
        )
        db.add(
            MaildropLease(
                mailbox_id=world[BOB],
                holder="other-host:2:y",
                acquired_at=now,
                expires_at=now + dt.timedelta(seconds=60),
            )
        )
    alice = RawClient(server.port)
    assert alice.login(ALICE, DEFAULT_PASSWORD).startswith(b"+OK Logged in")
    bob = RawClient(server.port)
    assert bob.login(BOB, DEFAULT_PASSWORD).startswith(b"-ERR [IN-USE]")
    alice.cmd("QUIT")


def test_lease_is_renewed_while_the_session_lives(
    start: Callable[..., ServerThread],
    session_factory: sessionmaker[Session],
    world: dict[str, int],
) -> None:
    server = start(pop3_maildrop_lock="lease", server_kwargs={"lease_seconds": 0.9})
    client = RawClient(server.port)
    assert client.login(ALICE, DEFAULT_PASSWORD).startswith(b"+OK")
    time.sleep(2.0)  # more than two lease lengths: only renewal keeps it
    other = RawClient(server.port)
    assert other.login(ALICE, DEFAULT_PASSWORD).startswith(b"-ERR [IN-USE]")
    assert client.cmd("STAT").startswith(b"+OK")
    client.cmd("QUIT")


# ------------------------------------------------------------------------------ authentication
def test_unknown_user_and_wrong_password_look_the_same_and_are_throttled(
    server: ServerThread, session_factory: sessionmaker[Session]
) -> None:
    client = RawClient(server.port)
    assert client.login("nobody@a.example", DEFAULT_PASSWORD) == AUTH_FAILED
    with transaction(session_factory) as db:
        keys = {row.key: row.charged for row in db.scalars(select(LoginCounter))}
    assert keys == {"mail:ip:127.0.0.1": 1, "mail:user:nobody@a.example": 1}
    clear_throttle(session_factory)
    assert client.login(ALICE, "wrong password") == AUTH_FAILED
    with transaction(session_factory) as db:
        keys = {row.key: row.charged for row in db.scalars(select(LoginCounter))}
    assert keys == {"mail:ip:127.0.0.1": 1, f"mail:user:{ALICE}": 1}
    # The next attempt is answered at once (no sleeping); success gives back only its own
    # charge (the failure stays) and records the login for the portal and the dashboard.
    assert client.login(ALICE.upper().replace("ALICE", "alice"), DEFAULT_PASSWORD).startswith(
        b"+OK Logged in"
    )
    with transaction(session_factory) as db:
        assert db.get(LoginCounter, "mail:ip:127.0.0.1").charged == 1  # type: ignore[union-attr]
        mailbox = db.scalars(select(Mailbox).where(Mailbox.local_part == "alice")).one()
        assert mailbox.last_login_at is not None
        assert stats.get(db, metric="pop3_logins") == 1
    client.cmd("QUIT")


def test_auth_plain_with_and_without_initial_response(server: ServerThread) -> None:
    import base64

    token = base64.b64encode(f"\0{ALICE}\0{DEFAULT_PASSWORD}".encode()).decode()
    client = RawClient(server.port)
    assert client.cmd(f"AUTH PLAIN {token}").startswith(b"+OK Logged in")
    client.cmd("QUIT")
    client = RawClient(server.port)
    assert client.cmd("AUTH PLAIN") == b"+ "
    assert client.cmd(token).startswith(b"+OK Logged in")
    client.cmd("QUIT")
    client = RawClient(server.port)
    assert client.cmd("AUTH PLAIN") == b"+ "
    assert client.cmd("*") == b"-ERR Authentication cancelled"
    client.cmd("QUIT")


@pytest.mark.parametrize(
    "username",
    [
        "../b.example/bob",
        "../../b.example/bob@a.example",
        "bob@b.example@a.example",
        "alice@a.example@b.example",
        "bob%b.example@a.example",
        "bob@a.example",
        "bob",
        "bob@b.example\x00@a.example",
        "alice@a.example\x00bob@b.example",
        "b.example/bob@a.example",
        "bob@b.example/../a.example",
        " bob@b.example",
        "bob@b.example.",
    ],
)
def test_no_username_reaches_another_domains_mailbox(
    server: ServerThread,
    store: MaildirStore,
    session_factory: sessionmaker[Session],
    username: str,
) -> None:
    deliver(store, BOB, b"Subject: for bob only\n\nsecret\n")
    clear_throttle(session_factory)
    client = RawClient(server.port)
    client.cmd(b"USER " + username.encode())
    reply = client.cmd("PASS " + DEFAULT_PASSWORD)  # both users share the password
    if reply.startswith(b"+OK"):
        # Only a name that IS Bob's address (whitespace/case aside) may open Bob's mailbox.
        assert username.strip().lower().rstrip(".") == BOB, (username, reply)
    else:
        assert reply == AUTH_FAILED
    client.close()


def test_server_side_failure_answers_sys_temp(
    settings: Settings, store: MaildirStore, tmp_path: Path
) -> None:
    from app.db import make_engine, make_session_factory

    broken = settings.model_copy(update={"database_url": "postgresql://nobody@127.0.0.1:1/none"})
    engine = make_engine(broken)
    try:
        with running_server(
            broken, session_factory=make_session_factory(engine), store=store
        ) as server:
            client = RawClient(server.port)
            assert client.login(ALICE, DEFAULT_PASSWORD) == (
                b"-ERR [SYS/TEMP] Temporary server failure, try again later"
            )
            client.cmd("QUIT")
    finally:
        engine.dispose()


# ------------------------------------------------------------------------------ robustness
def test_long_lines_are_refused_and_the_session_goes_on(server: ServerThread) -> None:
    client = RawClient(server.port)
    assert client.cmd("NOOP " + "x" * 300) == b"-ERR Command line too long"
    assert client.cmd(b"X" * 200_000) == b"-ERR Command line too long"
    assert client.cmd("CAPA") == b"+OK Capability list follows"
    assert b"\r\nUSER\r\n" in client.multiline_raw()
    client.login(ALICE, DEFAULT_PASSWORD)
    assert client.cmd("STAT") == b"+OK 0 0"
    client.cmd("QUIT")


def test_unknown_command_limit(start: Callable[..., ServerThread]) -> None:
    server = start(pop3_max_unknown_commands=3)
    client = RawClient(server.port)
    assert client.cmd("HELO") == b"-ERR Unknown command"
    assert client.cmd("EHLO") == b"-ERR Unknown command"
    assert client.cmd("GET / HTTP/1.0") == b"-ERR Too many invalid commands"
    assert client.at_eof()


def test_foreign_maildir_files_are_served(server: ServerThread, store: MaildirStore) -> None:
    """Files delivered by Postfix (LF, no sizes in the name) or Dovecot (CRLF, in cur/)."""
    maildir = store.ensure(ref(ALICE))
    postfix = b"Subject: postfix\n\n.line\nbody\n"
    dovecot = b"Subject: dovecot\r\n\r\nbody\r\n.\r\nend\r\n"
    (maildir / "new" / "1700000000.V801I2M3.postfix-host").write_bytes(postfix)
    (maildir / "cur" / "1700000001.M4P5Q6.dovecot-host:2,S").write_bytes(dovecot)
    client = pop(server.port)
    client.user(ALICE)
    client.pass_(DEFAULT_PASSWORD)
    assert client.list()[1] == [
        f"1 {len(to_wire(postfix))}".encode(),
        f"2 {len(dovecot)}".encode(),
    ]
    assert client.uidl()[1] == [
        b"1 1700000000.V801I2M3.postfix-host",
        b"2 1700000001.M4P5Q6.dovecot-host",
    ]
    assert client.retr(1)[1] == [b"Subject: postfix", b"", b".line", b"body"]
    assert client.retr(2)[1] == [b"Subject: dovecot", b"", b"body", b".", b"end"]
    client.dele(2)
    client.quit()
    assert [m.uid for m in store.list_messages(ref(ALICE))] == ["1700000000.V801I2M3.postfix-host"]


def _unstuffed_retr(client: RawClient, number: int) -> bytes:
    """The message as RETR transmitted it: CRLF line ends, dot-stuffing and "." removed."""
    assert client.cmd(f"RETR {number}").startswith(b"+OK")
    raw = client.multiline_raw()[: -len(b".\r\n")]
    return b"".join(
        line[1:] if line.startswith(b".") else line for line in raw.splitlines(keepends=True)
    )


def test_stat_and_list_octets_are_the_crlf_size_of_what_retr_sends(
    server: ServerThread, store: MaildirStore
) -> None:
    """RFC 1939 section 11: sizes count CRLF line ends (not dot-stuffing).  Checked against
    the bytes RETR sends, for our files, foreign LF and CRLF files, and a mailbox of many
    identical messages (issue 16: Dovecot's STAT and ours must agree to the octet), through
    the index after it is built and after a foreign file changed the directory."""
    bench_like = b"Subject: same\n\n" + b".dot line\n" + b"x" * 60 + b"\n" * 3
    deliver(store, ALICE, *([bench_like] * 300), MSG_DOTS)
    maildir = store.ensure(ref(ALICE))
    postfix = b"Subject: postfix\n\n.line\nbody\n"
    dovecot = b"Subject: dovecot\r\n\r\nbody\r\n.\r\nmixed\nend\r\n"
    (maildir / "new" / "1800000000.V801I2M3.postfix-host").write_bytes(postfix)
    for session in range(2):  # builds the index, then reads it
        client = RawClient(server.port)
        assert client.login(ALICE, DEFAULT_PASSWORD).startswith(b"+OK")
        count, octets = (int(x) for x in client.cmd("STAT").split()[1:3])
        assert client.cmd("LIST").startswith(b"+OK")
        sizes = [int(line.split()[1]) for line in client.multiline_raw().splitlines()[:-1]]
        assert count == len(sizes) == 302 + session
        assert octets == sum(sizes)
        for number in (1, 300, 301, 302, count):
            assert sizes[number - 1] == len(_unstuffed_retr(client, number))
        assert sizes[0] == len(bench_like) + bench_like.count(b"\n")
        # The CRLF file keeps its CRLFs; its one bare LF becomes CRLF (one octet more).
        assert octets == 300 * sizes[0] + len(to_wire(MSG_DOTS)) + len(to_wire(postfix)) + (
            len(dovecot) + 1 if session else 0
        )
        assert client.cmd("QUIT").startswith(b"+OK")
        client.close()
        if session == 0:
            (maildir / "cur" / "1800000001.M4P5Q6.dovecot-host:2,S").write_bytes(dovecot)


def test_uidl_is_stable_across_sessions(server: ServerThread, store: MaildirStore) -> None:
    deliver(store, ALICE, MSG_PLAIN, MSG_DOTS)
    seen = []
    for _ in range(2):
        client = pop(server.port)
        client.user(ALICE)
        client.pass_(DEFAULT_PASSWORD)
        seen.append(client.uidl()[1])
        client.dele(1)
        client.rset()
        client.quit()
    assert seen[0] == seen[1]
    assert len(set(seen[0])) == 2


# ------------------------------------------------------------------------------ TLS
def test_stls_then_login(start: Callable[..., ServerThread], tls_settings: Settings) -> None:
    server = start(tls_settings, pop3_require_tls=True)
    client = pop(server.port)
    caps = client.capa()
    assert "STLS" in caps and "USER" not in caps
    with pytest.raises(poplib.error_proto, match="Plaintext authentication disallowed"):
        client.user(ALICE)
    client.stls(client_tls_context())
    caps = client.capa()
    assert "STLS" not in caps and "USER" in caps and caps["SASL"] == ["PLAIN"]
    client.user(ALICE)
    client.pass_(DEFAULT_PASSWORD)
    assert client.stat() == (0, 0)
    client.quit()


def test_stls_discards_commands_pipelined_before_the_handshake(
    start: Callable[..., ServerThread], tls_settings: Settings
) -> None:
    server = start(tls_settings)
    client = RawClient(server.port)
    # An attacker-injected command after STLS in the same packet must not run inside TLS.
    client.send(b"STLS\r\nCAPA\r\n")
    assert client.line() == b"+OK Begin TLS negotiation"
    tls = client_tls_context().wrap_socket(client.sock, server_hostname="127.0.0.1")
    tls.settimeout(1.0)
    with pytest.raises(TimeoutError):
        tls.recv(100)  # no answer to the injected CAPA
    tls.settimeout(TIMEOUT)
    tls.sendall(b"NOOP\r\n")
    assert tls.recv(100) == b"-ERR NOOP not valid in the AUTHORIZATION state\r\n"
    tls.close()


def test_implicit_tls_port(start: Callable[..., ServerThread], tls_settings: Settings) -> None:
    server = start(tls_settings, pop3s_port=0)
    port = server.server.ports["pop3s"]
    client = poplib.POP3_SSL("127.0.0.1", port, timeout=TIMEOUT, context=client_tls_context())
    assert "STLS" not in client.capa()
    client.user(ALICE)
    client.pass_(DEFAULT_PASSWORD)
    assert client.stat() == (0, 0)
    client.quit()


# ------------------------------------------------------------------------------ curl
def test_curl_lists_and_retrieves(server: ServerThread, store: MaildirStore) -> None:
    curl = require_curl()
    deliver(store, ALICE, MSG_PLAIN, MSG_DOTS)
    base = [
        curl,
        "--silent",
        "--show-error",
        "--max-time",
        "20",
        "--user",
        f"{ALICE}:{DEFAULT_PASSWORD}",
    ]
    url = f"pop3://127.0.0.1:{server.port}"
    listing = subprocess.run([*base, f"{url}/"], capture_output=True, check=True, timeout=30)
    assert listing.stdout == (
        f"1 {len(to_wire(MSG_PLAIN))}\r\n2 {len(to_wire(MSG_DOTS))}\r\n".encode()
    )
    message = subprocess.run([*base, f"{url}/2"], capture_output=True, check=True, timeout=30)
    assert message.stdout == to_wire(MSG_DOTS)
    # curl's DELE: a custom request on a message number, then QUIT expunges it.
    subprocess.run(
        [*base, "--request", "DELE", "--list-only", f"{url}/1"],
        capture_output=True,
        check=True,
        timeout=30,
    )
    assert [m.size for m in store.list_messages(ref(ALICE))] == [len(MSG_DOTS)]


# ------------------------------------------------------------------------------ large messages
def test_50_mb_message_streams_with_flat_memory(server: ServerThread, store: MaildirStore) -> None:
    line = b".a line starting with a dot, to be stuffed " + b"x" * 50 + b"\n"
    block = line * (1024 * 1024 // len(line))
    maildir = store.ensure(ref(ALICE))
    path = maildir / "new" / "1700000002.M1P1Q1.big"
    with open(path, "wb") as fh:
        for _ in range(50):
            fh.write(block)
    expected_size = 50 * (len(block) + block.count(b"\n"))
    client = RawClient(server.port)
    client.login(ALICE, DEFAULT_PASSWORD)
    tracemalloc.start()
    try:
        assert client.cmd("RETR 1") == f"+OK {expected_size} octets".encode()
        received = 0
        tail = b""
        while not tail.endswith(b"\r\n.\r\n"):
            chunk = client.file.read1(1 << 20)
            assert chunk
            received += len(chunk)
            tail = (tail + chunk)[-16:]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    lines = 50 * block.count(b"\n")
    assert received == expected_size + lines + 3  # + one stuffing dot per line + ".\r\n"
    # Server thread and client in one process: both together stay far below 50 MB.
    assert peak < 12 * 1024 * 1024, peak
    client.cmd("QUIT")


def _fill_to(buf: bytearray, offset: int, eol: bytes) -> None:
    """Append filler lines so that ``buf`` ends with a line end exactly at ``offset``."""
    while len(buf) < offset:
        room = offset - len(buf) - len(eol)
        buf += b"x" * max(0, min(room, 98)) + eol
    assert len(buf) == offset


def _block_edge_messages() -> tuple[bytes, bytes]:
    """An own (LF) and a foreign (CRLF) message whose line-initial dots and line ends fall
    on the server's read-block boundaries."""
    own = bytearray(b"Subject: block edges\n\n")
    _fill_to(own, BLOCK_SIZE, b"\n")  # block 2 starts a line with "."
    own += b".dot at the start of a block\n"
    _fill_to(own, 2 * BLOCK_SIZE - 1, b"\n")
    own += b".dot as the last byte of a block\n"  # "\n." split from the rest of the line
    _fill_to(own, 3 * BLOCK_SIZE - 40, b"\n")
    own += b"y" * 39 + b".." + b" dots in mid-line across the edge, not stuffed\n.\n..\nend"
    foreign = bytearray(b"Subject: block edges\r\n\r\n")
    _fill_to(foreign, BLOCK_SIZE - 1, b"\r\n")
    foreign[-1:] = b"\r"  # the CR of a CRLF ends block 1, its LF starts block 2
    foreign += b"\n.dot after a split CRLF\r\n"
    _fill_to(foreign, 2 * BLOCK_SIZE + 7, b"\r\n")
    foreign += b".\r\nbare lf\n.\r\n"
    return bytes(own), bytes(foreign)


@pytest.mark.parametrize("cached", [True, False], ids=["page-cache-read", "thread-read"])
def test_large_retr_is_exact_across_read_blocks(
    start: Callable[..., ServerThread],
    store: MaildirStore,
    monkeypatch: pytest.MonkeyPatch,
    cached: bool,
) -> None:
    own, foreign = _block_edge_messages()
    reads: list[int | None] = []
    real_read_cached = maildir_module._read_cached

    def spy(fd: int, buffer: bytearray, offset: int) -> int | None:
        reads.append(real_read_cached(fd, buffer, offset) if cached else None)
        return reads[-1]

    monkeypatch.setattr(maildir_module, "_read_cached", spy)
    deliver(store, ALICE, own)
    (store.ensure(ref(ALICE)) / "new" / "1700000003.V801I2M4.postfix-host").write_bytes(foreign)
    expected = {
        False: reference_wire(own),
        True: reference_wire(foreign, crlf_source=True),
    }
    server = start()
    client = RawClient(server.port)
    client.login(ALICE, DEFAULT_PASSWORD)
    for number, info in enumerate(store.list_messages(ref(ALICE)), start=1):
        wire = expected[info.wire_size is None]
        assert client.cmd(f"RETR {number}").startswith(b"+OK ")
        assert client.multiline_raw() == wire
    client.cmd("QUIT")
    assert reads, "RETR of a large message never read a block"
    if cached and maildir_module._RWF_NOWAIT is not None:
        # Freshly written files are in the page cache: the loop thread read them itself.
        assert any(n for n in reads), reads
    if not cached:
        assert all(n is None for n in reads)


# ------------------------------------------------------------------------------ STLS timing
def test_stls_answers_a_command_sent_with_the_last_handshake_bytes(
    start: Callable[..., ServerThread], tls_settings: Settings
) -> None:
    """RFC 2595 section 4: the client's first command inside TLS may share a TCP segment with
    its TLS Finished (GnuTLS clients such as mpop do this); it must be answered."""
    server = start(tls_settings)
    client = RawClient(server.port)
    assert client.cmd("STLS") == b"+OK Begin TLS negotiation"
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client_tls_context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    sock = client.sock
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            sock.sendall(outgoing.read())
            data = sock.recv(65536)
            assert data, "server closed during the handshake"
            incoming.write(data)
    # The handshake is complete on our side; the Finished is still in ``outgoing``.
    tls.write(b"CAPA\r\n")
    sock.sendall(outgoing.read())  # Finished and CAPA in one write
    answer = b""
    deadline = time.monotonic() + TIMEOUT
    while not answer.endswith(b"\r\n.\r\n") and time.monotonic() < deadline:
        try:
            answer += tls.read(65536)
        except ssl.SSLWantReadError:
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
    assert answer.startswith(b"+OK"), answer
    assert b"\r\nUSER\r\n" in answer and answer.endswith(b"\r\n.\r\n"), answer
    sock.close()


def test_mpop_fetches_over_stls(
    server_tls: ServerThread, store: MaildirStore, tmp_path: Path
) -> None:
    mpop = require_mpop()
    deliver(store, ALICE, MSG_PLAIN, MSG_DOTS)
    target = tmp_path / "fetched"
    for sub in ("tmp", "new", "cur"):
        (target / sub).mkdir(parents=True)
    config = tmp_path / "mpoprc"
    config.write_text(
        "account default\n"
        "host 127.0.0.1\n"
        f"port {server_tls.port}\n"
        "tls on\n"
        "tls_starttls on\n"
        "tls_certcheck off\n"
        "auth user\n"
        f"user {ALICE}\n"
        f"password {DEFAULT_PASSWORD}\n"
        f"delivery maildir {target}\n"
        "keep off\n"
        "timeout 10\n"
    )
    config.chmod(0o600)
    result = subprocess.run(
        [mpop, "-C", str(config), "--quiet"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    fetched = sorted(p.read_bytes() for p in (target / "new").iterdir())
    assert len(fetched) == 2
    assert any(b"Subject: one" in m and b"Hello" in m for m in fetched)
    assert any(b".starts with a dot" in m and b"\n..\n" in m for m in fetched)
    # keep off: the messages were deleted on the server at QUIT.
    assert store.list_messages(ref(ALICE)) == []
