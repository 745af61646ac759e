"""Transcript tests of the sans-IO POP3 session and of the wire encoder: no sockets, no files."""

from __future__ import annotations

import base64
import io
import random
import tracemalloc
from dataclasses import dataclass, field

import pytest

from pop3_service.encoding import WireEncoder, encode_whole, iter_message, iter_top
from pop3_service.session import (
    Authenticate,
    AuthFailure,
    Close,
    Event,
    Expunge,
    LocalProtocolError,
    Pop3Session,
    Reply,
    SendMessage,
    StartTls,
    State,
    Waiting,
)
from tests.protocol.pop3_helpers import reference_wire

HOST = "pop.test.example"


@dataclass(frozen=True)
class Msg:
    uid: str
    size: int


@dataclass
class Drop:
    messages: list[Msg] = field(
        default_factory=lambda: [Msg("uid-1", 100), Msg("uid-2", 200), Msg("uid-3", 300)]
    )

    def total_octets(self) -> int:
        return sum(m.size for m in self.messages)


@dataclass
class Harness:
    """Plays the adapter: answers Authenticate from a fixed table, completes Expunge."""

    session: Pop3Session
    accounts: dict[str, str] = field(default_factory=lambda: {"alice@a.example": "s3cret pw"})
    in_use: set[str] = field(default_factory=set)
    temp_fail: bool = False
    expunge_fails: bool = False
    expunged: list[tuple[str, ...]] = field(default_factory=list)
    sent: list[SendMessage] = field(default_factory=list)
    closed: bool = False
    auth_seen: list[Authenticate] = field(default_factory=list)

    def feed(self, line: str | bytes) -> str:
        raw = line.encode() if isinstance(line, str) else line
        return self._render(self.session.receive_line(raw + b"\r\n"))

    def _render(self, events: list[Event]) -> str:
        out: list[bytes] = []
        for event in events:
            if isinstance(event, Reply):
                out.append(event.data)
            elif isinstance(event, Authenticate):
                self.auth_seen.append(event)
                out.append(self._render(self._auth(event)).encode())
            elif isinstance(event, SendMessage):
                self.sent.append(event)
                out.append(event.status + b"<message>\r\n.\r\n")
            elif isinstance(event, Expunge):
                self.expunged.append(event.uids)
                if self.expunge_fails:
                    out.append(self._render(self.session.expunge_failed()).encode())
                else:
                    result = self.session.expunge_succeeded(len(event.uids))
                    out.append(self._render(result).encode())
            elif isinstance(event, StartTls):
                self.session.tls_started()
            elif isinstance(event, Close):
                self.closed = True
        return b"".join(out).decode().replace("\r\n", "\n").rstrip("\n")

    def _auth(self, event: Authenticate) -> list[Event]:
        if self.temp_fail:
            return self.session.auth_failed(AuthFailure.TEMPORARY)
        if self.accounts.get(event.username) != event.password:
            return self.session.auth_failed(AuthFailure.BAD_CREDENTIALS)
        if event.username in self.in_use:
            return self.session.auth_failed(AuthFailure.IN_USE)
        return self.session.auth_succeeded(Drop(), username=event.username)


def harness(**kwargs: object) -> Harness:
    return Harness(Pop3Session(hostname=HOST, **kwargs))  # type: ignore[arg-type]


def logged_in(**kwargs: object) -> Harness:
    h = harness(**kwargs)
    h.feed("USER alice@a.example")
    assert h.feed("PASS s3cret pw").startswith("+OK Logged in")
    return h


NOT_IN_AUTH = "-ERR {} not valid in the AUTHORIZATION state"
NOT_IN_TRANS = "-ERR {} not valid in the TRANSACTION state"

# (name, logged in first?, [(client line, exact reply)]) -- one runner below.
TRANSCRIPTS: list[tuple[str, bool, list[tuple[str, str]]]] = [
    (
        "commands before login",
        False,
        [
            ("STAT", NOT_IN_AUTH.format("STAT")),
            ("LIST", NOT_IN_AUTH.format("LIST")),
            ("UIDL", NOT_IN_AUTH.format("UIDL")),
            ("RETR 1", NOT_IN_AUTH.format("RETR")),
            ("TOP 1 0", NOT_IN_AUTH.format("TOP")),
            ("DELE 1", NOT_IN_AUTH.format("DELE")),
            ("RSET", NOT_IN_AUTH.format("RSET")),
            ("NOOP", NOT_IN_AUTH.format("NOOP")),
            ("PASS s3cret pw", "-ERR USER first"),
            ("APOP alice@a.example 0123456789abcdef", "-ERR Unknown command"),
        ],
    ),
    (
        "login with USER/PASS, password with spaces, any case of keywords",
        False,
        [
            ("user alice@a.example", "+OK"),
            ("pass s3cret pw", "+OK Logged in, maildrop has 3 messages (600 octets)"),
            ("STAT", "+OK 3 600"),
        ],
    ),
    (
        "unknown user and wrong password look the same",
        False,
        [
            ("USER nobody@a.example", "+OK"),
            ("PASS s3cret pw", "-ERR [AUTH] Authentication failed"),
            ("USER alice@a.example", "+OK"),
            ("PASS wrong", "-ERR [AUTH] Authentication failed"),
            ("PASS s3cret pw", "-ERR USER first"),
            ("STAT", NOT_IN_AUTH.format("STAT")),
        ],
    ),
    (
        "message numbers",
        True,
        [
            ("RETR 0", "-ERR No such message"),
            ("RETR -1", "-ERR Invalid message number"),
            ("RETR 4", "-ERR No such message"),
            ("RETR 99999999999", "-ERR Invalid message number"),
            ("RETR x", "-ERR Invalid message number"),
            ("RETR 1.5", "-ERR Invalid message number"),
            ("RETR +1", "-ERR Invalid message number"),
            ("RETR", "-ERR Syntax: RETR msg"),
            ("RETR 1 2", "-ERR Syntax: RETR msg"),
            ("LIST 0", "-ERR No such message"),
            ("LIST -1", "-ERR Invalid message number"),
            ("LIST 4", "-ERR No such message"),
            ("LIST two", "-ERR Invalid message number"),
            ("UIDL 0", "-ERR No such message"),
            ("DELE 0", "-ERR No such message"),
            ("DELE -1", "-ERR Invalid message number"),
            ("DELE 4", "-ERR No such message"),
            ("TOP 0 1", "-ERR No such message"),
            ("TOP 1 -1", "-ERR Invalid line count"),
            ("TOP 1", "-ERR Syntax: TOP msg n"),
            ("RETR 3", "+OK 300 octets\n<message>\n."),
            ("TOP 2 5", "+OK\n<message>\n."),
        ],
    ),
    (
        "DELE marks, deleted messages are refused, RSET unmarks",
        True,
        [
            ("DELE 2", "+OK Message 2 deleted"),
            ("DELE 2", "-ERR Message already deleted"),
            ("RETR 2", "-ERR Message already deleted"),
            ("TOP 2 0", "-ERR Message already deleted"),
            ("LIST 2", "-ERR Message already deleted"),
            ("UIDL 2", "-ERR Message already deleted"),
            ("STAT", "+OK 2 400"),
            ("LIST", "+OK 2 messages (400 octets)\n1 100\n3 300\n."),
            ("UIDL", "+OK 2 messages (400 octets)\n1 uid-1\n3 uid-3\n."),
            ("RSET", "+OK Maildrop has 3 messages (600 octets)"),
            ("LIST 2", "+OK 2 200"),
            ("UIDL 2", "+OK 2 uid-2"),
            ("NOOP", "+OK"),
        ],
    ),
    (
        "authorization commands after login",
        True,
        [
            ("USER alice@a.example", NOT_IN_TRANS.format("USER")),
            ("PASS x", NOT_IN_TRANS.format("PASS")),
            ("AUTH PLAIN", NOT_IN_TRANS.format("AUTH")),
            ("STLS", NOT_IN_TRANS.format("STLS")),
            ("STAT 1", "-ERR STAT takes no argument"),
        ],
    ),
    (
        "CAPA in both states (RFC 2449), no STLS without a certificate",
        False,
        [
            (
                "CAPA",
                "+OK Capability list follows\nTOP\nUIDL\nRESP-CODES\nAUTH-RESP-CODE\n"
                "PIPELINING\nUSER\nSASL PLAIN\nIMPLEMENTATION Mailhost\n.",
            ),
            ("STLS", "-ERR STLS not available"),
        ],
    ),
    (
        "AUTH PLAIN: listing, initial response, continuation, cancel, bad base64",
        False,
        [
            ("AUTH", "+OK\nPLAIN\n."),
            ("AUTH CRAM-MD5", "-ERR Unsupported authentication mechanism"),
            ("AUTH PLAIN", "+ "),
            ("*", "-ERR Authentication cancelled"),
            ("AUTH PLAIN !!!!", "-ERR [AUTH] Invalid base64 in SASL response"),
            ("AUTH PLAIN =", "-ERR [AUTH] Authentication failed"),
            (
                "AUTH PLAIN "
                + base64.b64encode(b"bob@a.example\0alice@a.example\0s3cret pw").decode(),
                "-ERR [AUTH] Authentication failed",
            ),
            ("AUTH PLAIN", "+ "),
            (
                base64.b64encode(b"\0alice@a.example\0s3cret pw").decode(),
                "+OK Logged in, maildrop has 3 messages (600 octets)",
            ),
        ],
    ),
    (
        "AUTH PLAIN with initial response and matching authzid",
        False,
        [
            (
                "AUTH PLAIN "
                + base64.b64encode(b"alice@a.example\0alice@a.example\0s3cret pw").decode(),
                "+OK Logged in, maildrop has 3 messages (600 octets)",
            ),
        ],
    ),
    (
        "over-long command lines are refused and the session goes on",
        True,
        [
            ("NOOP " + "x" * 248, "+OK"),  # 253 octets + CRLF = 255
            ("NOOP " + "x" * 2000, "-ERR Command line too long"),
            ("STAT", "+OK 3 600"),
        ],
    ),
    (
        "QUIT in AUTHORIZATION deletes nothing",
        False,
        [("QUIT", f"+OK {HOST} POP3 server signing off")],
    ),
    (
        "QUIT in TRANSACTION expunges the marked messages",
        True,
        [
            ("DELE 1", "+OK Message 1 deleted"),
            ("QUIT", f"+OK {HOST} POP3 server signing off (1 deleted)"),
        ],
    ),
]


@pytest.mark.parametrize(("name", "login", "rows"), TRANSCRIPTS, ids=[t[0] for t in TRANSCRIPTS])
def test_transcript(name: str, login: bool, rows: list[tuple[str, str]]) -> None:
    h = logged_in() if login else harness()
    for line, expected in rows:
        assert h.feed(line) == expected, f"after {line!r}"


def test_long_line_boundary_is_255_octets_with_crlf() -> None:
    h = logged_in()
    assert h.feed("NOOP " + "x" * 248) == "+OK"  # 253 octets + CRLF = 255: allowed
    assert h.feed("NOOP " + "x" * 249) == "-ERR Command line too long"  # 256 with CRLF


def test_quit_expunges_exactly_the_marked_uids_and_closes() -> None:
    h = logged_in()
    h.feed("DELE 3")
    h.feed("DELE 1")
    h.feed("DELE 2")
    h.feed("RSET")
    h.feed("DELE 3")
    h.feed("DELE 1")
    h.feed("QUIT")
    assert h.expunged == [("uid-1", "uid-3")]
    assert h.closed and h.session.state is State.CLOSED


def test_quit_without_deletions_does_not_ask_for_an_expunge() -> None:
    h = logged_in()
    assert h.feed("QUIT") == f"+OK {HOST} POP3 server signing off (0 deleted)"
    assert h.expunged == [] and h.closed


def test_failed_expunge_answers_sys_temp() -> None:
    h = logged_in()
    h.expunge_fails = True
    h.feed("DELE 1")
    assert h.feed("QUIT") == "-ERR [SYS/TEMP] Some deleted messages were not removed, try again"
    assert h.closed


@pytest.mark.parametrize(
    ("how", "call"),
    [
        ("idle timeout", Pop3Session.timed_out),
        ("shutdown", Pop3Session.shutting_down),
        ("dropped connection", Pop3Session.connection_lost),
    ],
)
def test_ending_without_quit_never_expunges(how: str, call: object) -> None:
    h = logged_in()
    h.feed("DELE 1")
    events = call(h.session)  # type: ignore[operator]
    assert not any(isinstance(e, Expunge) for e in events or [])
    assert h.session.state is State.CLOSED
    with pytest.raises(LocalProtocolError):
        h.session.receive_line(b"QUIT\r\n")


def test_in_use_and_temporary_failures_have_their_codes() -> None:
    h = harness()
    h.in_use.add("alice@a.example")
    h.feed("USER alice@a.example")
    assert h.feed("PASS s3cret pw") == (
        "-ERR [IN-USE] Maildrop is locked by another session, try again later"
    )
    h = harness()
    h.temp_fail = True
    h.feed("USER alice@a.example")
    assert h.feed("PASS s3cret pw") == "-ERR [SYS/TEMP] Temporary server failure, try again later"
    assert h.session.state is State.AUTHORIZATION


def test_unknown_command_limit_closes_the_session() -> None:
    h = harness(max_unknown_commands=3)
    assert h.feed("FOO") == "-ERR Unknown command"
    assert h.feed("") == "-ERR Unknown command"
    assert h.feed("BAR") == "-ERR Too many invalid commands"
    assert h.closed and h.session.state is State.CLOSED


def test_plaintext_login_can_require_tls() -> None:
    h = harness(require_tls=True, tls_available=True)
    capa = h.feed("CAPA")
    assert "USER" not in capa.split("\n") and "SASL PLAIN" not in capa and "STLS" in capa
    refused = "-ERR [AUTH] Plaintext authentication disallowed without TLS (STLS)"
    assert h.feed("USER alice@a.example") == refused
    assert h.feed("PASS s3cret pw") == refused
    assert h.feed("AUTH PLAIN") == refused
    assert h.auth_seen == []
    assert h.feed("STLS") == "+OK Begin TLS negotiation"
    assert h.session.tls_active
    capa = h.feed("CAPA")
    assert "USER" in capa.split("\n") and "STLS" not in capa
    h.feed("USER alice@a.example")
    assert h.feed("PASS s3cret pw").startswith("+OK Logged in")


def test_stls_forgets_a_user_given_before_it() -> None:
    h = harness(tls_available=True)
    h.feed("USER alice@a.example")
    h.feed("STLS")
    assert h.feed("PASS s3cret pw") == "-ERR USER first"
    assert h.feed("STLS") == "-ERR TLS is already active"


def test_waiting_for_the_adapter_refuses_input_with_a_typed_error() -> None:
    s = Pop3Session(hostname=HOST)
    s.receive_line(b"USER alice@a.example")
    events = s.receive_line(b"PASS pw")
    assert events == [Authenticate("alice@a.example", "pw", "USER")]
    assert s.waiting is Waiting.AUTH_RESULT
    with pytest.raises(LocalProtocolError):
        s.receive_line(b"STAT")
    with pytest.raises(LocalProtocolError):
        s.expunge_succeeded(0)
    with pytest.raises(LocalProtocolError):
        s.tls_started()
    s.auth_failed(AuthFailure.BAD_CREDENTIALS)
    with pytest.raises(LocalProtocolError):
        s.auth_failed(AuthFailure.BAD_CREDENTIALS)


def test_odd_usernames_reach_the_authenticator_verbatim() -> None:
    """The session never interprets the name: the adapter/services decide (isolation tests)."""
    h = harness()
    for name in ["../b.example/bob", "bob%b.example@a.example", "alice@a.example@b.example"]:
        h.feed(f"USER {name}")
        assert h.feed("PASS s3cret pw") == "-ERR [AUTH] Authentication failed"
    h.feed(b"USER alice@a.example\x00@b.example")
    assert h.feed("PASS s3cret pw") == "-ERR [AUTH] Authentication failed"
    assert [a.username for a in h.auth_seen][-1] == "alice@a.example\x00@b.example"


# ------------------------------------------------------------------------------ wire encoding
ENCODING_CASES = [
    (b"", b".\r\n"),
    (b"a\n", b"a\r\n.\r\n"),
    (b"a", b"a\r\n.\r\n"),
    (b".\n", b"..\r\n.\r\n"),
    (b"Subject: x\n\nbody\n.\nmore\n", b"Subject: x\r\n\r\nbody\r\n..\r\nmore\r\n.\r\n"),
    (b"..x\n.", b"...x\r\n..\r\n.\r\n"),
    (b"a\r\nb\n", b"a\r\r\nb\r\n.\r\n"),  # own files: every LF is a line end, CR is content
]


@pytest.mark.parametrize(("stored", "wire"), ENCODING_CASES)
def test_encoding_table(stored: bytes, wire: bytes) -> None:
    assert encode_whole(stored) == wire
    # Every split into blocks gives the same bytes (dot-stuffing across block boundaries).
    for size in (1, 2, 3):
        assert b"".join(iter_message(io.BytesIO(stored), block_size=size)) == wire


def test_foreign_crlf_files_keep_crlf_even_split_across_blocks() -> None:
    stored = b"Subject: y\r\n\r\n.dot\r\nlone\rcr\nbare lf\n.\r\n"
    wire = b"Subject: y\r\n\r\n..dot\r\nlone\rcr\r\nbare lf\r\n..\r\n.\r\n"
    for size in range(1, len(stored) + 1):
        out = b"".join(iter_message(io.BytesIO(stored), crlf_source=True, block_size=size))
        assert out == wire, size


def test_body_with_lone_dot_line_never_ends_early() -> None:
    stored = b"Subject: t\n\nline\n.\n\n.\nend\n"
    wire = encode_whole(stored)
    assert wire.count(b"\r\n.\r\n") == 1 and wire.endswith(b"\r\n.\r\n")


def test_wire_size_matches_the_encoded_length_without_the_terminator() -> None:
    stored = b"a\n.b\nc\n"
    # Size counts CRLF but not the stuffing dots (RFC 1939: octets of the message).
    assert len(encode_whole(stored)) - 3 - stored.count(b"\n.") == len(stored) + stored.count(b"\n")


TOP_MESSAGE = b"From: a\nSubject: s\n\nl1\n.l2\nl3\n"


@pytest.mark.parametrize(
    ("lines", "wire"),
    [
        (0, b"From: a\r\nSubject: s\r\n\r\n.\r\n"),
        (1, b"From: a\r\nSubject: s\r\n\r\nl1\r\n.\r\n"),
        (2, b"From: a\r\nSubject: s\r\n\r\nl1\r\n..l2\r\n.\r\n"),
        (99, b"From: a\r\nSubject: s\r\n\r\nl1\r\n..l2\r\nl3\r\n.\r\n"),
    ],
)
def test_top(lines: int, wire: bytes) -> None:
    assert b"".join(iter_top(io.BytesIO(TOP_MESSAGE), lines)) == wire
    assert b"".join(iter_top(io.BytesIO(TOP_MESSAGE), lines, piece_size=2)) == wire


def test_top_of_a_message_without_body() -> None:
    assert b"".join(iter_top(io.BytesIO(b"From: a\nSubject: s"), 3)) == (
        b"From: a\r\nSubject: s\r\n.\r\n"
    )


class _Pattern(io.RawIOBase):
    """A 50 MB message generated on the fly (no 50 MB buffer in the test either)."""

    def __init__(self, total: int) -> None:
        self.left = total
        self.line = b".dotted line that needs stuffing " + b"x" * 60 + b"\n"

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        reps = self.line * (n // len(self.line) + 1)
        buffer[:n] = reps[:n]
        self.left -= n
        return n


def test_streaming_50_mb_keeps_memory_flat() -> None:
    total = 50 * 1024 * 1024
    source = io.BufferedReader(_Pattern(total), buffer_size=64 * 1024)
    tracemalloc.start()
    try:
        sent = 0
        for chunk in iter_message(source):
            sent += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sent > total  # CRLF and dot-stuffing added
    # A few blocks in flight (256 KiB read, x2 worst-case expansion), never the message.
    assert peak < 4 * 1024 * 1024, peak


def test_encoder_is_incremental() -> None:
    enc = WireEncoder()
    assert enc.feed(b"a\n") + enc.feed(b".b") + enc.finish() == b"a\r\n..b\r\n.\r\n"


@pytest.mark.parametrize("crlf_source", [False, True], ids=["own-lf", "foreign-crlf"])
def test_encoder_matches_the_line_by_line_reference_for_any_block_split(
    crlf_source: bool,
) -> None:
    """Random messages made of the bytes that matter (".", CR, LF), fed in random blocks
    through one reused bytearray, as the server's RETR does: the same bytes as the obvious
    line-by-line encoding, whatever the split."""
    rng = random.Random(1939)
    alphabet = b"..\n\n\rab"
    for _ in range(300):
        stored = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        expected = reference_wire(stored, crlf_source=crlf_source)
        assert encode_whole(stored, crlf_source=crlf_source) == expected, stored
        encoder = WireEncoder(crlf_source=crlf_source)
        buffer = bytearray(8)
        out: list[bytes | bytearray] = []
        position = 0
        while position < len(stored):
            n = rng.randrange(1, 9)
            chunk = stored[position : position + n]
            position += len(chunk)
            buffer[: len(chunk)] = chunk
            out.append(encoder.feed(buffer if len(chunk) == len(buffer) else buffer[: len(chunk)]))
            buffer[:] = b"\xff" * len(buffer)  # refilled: what was returned must not change
        assert b"".join(out) + encoder.finish() == expected, stored


def test_list_and_uidl_of_a_big_maildrop_span_the_reply_slices() -> None:
    """LIST and UIDL are built a slice of messages at a time: every line once, in order,
    the deleted ones left out, also across slice boundaries."""
    messages = [Msg(f"uid-{n}", 100 + n) for n in range(5001)]
    session = Pop3Session(hostname=HOST)
    session.receive_line(b"USER alice@a.example\r\n")
    session.receive_line(b"PASS s3cret pw\r\n")
    session.auth_succeeded(Drop(messages=messages), username="alice@a.example")
    deleted = (1, 2048, 2049, 4096, 5001)
    for number in deleted:
        session.receive_line(b"DELE %d\r\n" % number)
    kept = [n for n in range(1, 5002) if n not in deleted]
    octets = sum(100 + n - 1 for n in kept)
    for command, value in ((b"LIST", lambda n: 100 + n - 1), (b"UIDL", lambda n: f"uid-{n - 1}")):
        [reply] = session.receive_line(command + b"\r\n")
        assert isinstance(reply, Reply)
        lines = reply.data.decode().split("\r\n")
        assert lines[0] == f"+OK {len(kept)} messages ({octets} octets)"
        assert lines[1:-2] == [f"{n} {value(n)}" for n in kept]
        assert lines[-2:] == [".", ""]
