"""The POP3 protocol as a sans-IO state machine: command lines in, replies and events out.

Theory of operation
-------------------
A :class:`Pop3Session` never touches a socket, a file or the database. The adapter (see
``server.py``) feeds it one command line at a time with :meth:`Pop3Session.receive_line` and
gets back a list of events to act on, in order:

* :class:`Reply` -- bytes to write to the client, already framed (CRLF, multi-line ``.``).
* :class:`Authenticate` -- credentials to check.  The session is then *waiting* and refuses
  more input (:class:`LocalProtocolError`) until the adapter calls :meth:`auth_succeeded`
  with the locked, snapshotted maildrop or :meth:`auth_failed` with the reason.
* :class:`SendMessage` -- stream a message (``RETR``/``TOP``): the adapter writes
  ``status`` when it could open the message (``unavailable`` otherwise), then the message
  dot-stuffed with CRLF line endings, then the ``.`` line (see ``encoding.py``).
* :class:`StartTls` -- negotiate TLS now (the ``+OK`` is already in a preceding Reply); the
  adapter must discard anything the client sent after ``STLS`` (RFC 2595 section 4 forbids
  pipelining across it; keeping it would allow command injection) and call
  :meth:`tls_started`.
* :class:`Expunge` -- ``QUIT`` in the TRANSACTION state with messages marked deleted: remove
  them, then call :meth:`expunge_succeeded` or :meth:`expunge_failed`.
* :class:`Close` -- close the connection after writing the preceding replies.

States follow RFC 1939 section 3: AUTHORIZATION -> TRANSACTION -> UPDATE (entered only by
``QUIT`` from TRANSACTION) -> CLOSED.  A connection that ends any other way (drop, idle
timeout, server shutdown) goes straight to CLOSED and nothing is deleted (RFC 1939 section 6).

The protocol only sees a :class:`Maildrop` handed to it after login (Twisted's style): a fixed
snapshot of ``(uid, size)`` pairs.  It never learns where messages live.

Calling a method that makes no sense in the current state (feeding a line while waiting for an
authentication result, reporting an expunge nobody asked for) is a bug in the adapter and
raises :class:`LocalProtocolError`; anything the *client* does wrong is answered with ``-ERR``.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

# RFC 2449 section 4: "command lines ... MUST NOT exceed 255 octets, including the terminating
# CRLF".  The adapter strips the line ending, hence 253.
MAX_COMMAND_LINE = 255 - 2
# RFC 4616 section 2: authzid, authcid and passwd are each at most 255 octets of UTF-8, plus two
# NUL separators = 767 octets, 1,024 once base64-encoded (RFC 5034 section 4 lifts the command
# line limit for SASL responses, so they need their own bound).
MAX_SASL_RESPONSE = 1024
# Adapters may stop buffering a line past this many octets: anything longer is refused anyway.
MAX_LINE_BUFFER = MAX_SASL_RESPONSE + 2


class LocalProtocolError(Exception):
    """The adapter drove the session in a way its current state does not allow."""


class State(enum.Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    UPDATE = "UPDATE"
    CLOSED = "CLOSED"


class Waiting(enum.Enum):
    """What the session waits for besides the next command line."""

    NOTHING = "nothing"
    SASL_RESPONSE = "sasl-response"  # a client line answering our "+ " continuation
    AUTH_RESULT = "auth-result"  # adapter: auth_succeeded / auth_failed
    TLS = "tls"  # adapter: tls_started
    EXPUNGE_RESULT = "expunge-result"  # adapter: expunge_succeeded / expunge_failed


class AuthFailure(enum.Enum):
    """Why a login failed, as the adapter reports it; each maps to one RFC 2449 code."""

    BAD_CREDENTIALS = "bad-credentials"  # unknown user, wrong password, disabled: all alike
    IN_USE = "in-use"  # maildrop locked by another session (RFC 2449 section 8.1.1)
    TEMPORARY = "temporary"  # database down, I/O error (RFC 3206 SYS/TEMP)
    # Too many failed logins from this address or for this account: refused without checking
    # the password. [SYS/TEMP], not [AUTH]: RFC 3206 section 4 has clients ask the user for new
    # credentials on [AUTH], but these were never checked; the client should just retry later.
    THROTTLED = "throttled"


class SnapshotMessage(Protocol):
    """What the protocol knows of one message: its unique id and its size on the wire."""

    @property
    def uid(self) -> str: ...

    @property
    def size(self) -> int: ...


class Maildrop(Protocol):
    """The locked mailbox handed to the session after login; numbering is fixed for the session."""

    @property
    def messages(self) -> Sequence[SnapshotMessage]: ...

    def total_octets(self) -> int:
        """The sum of every message's size (the login reply and STAT answer from it)."""
        ...


# ------------------------------------------------------------------------------------ events
@dataclass(frozen=True, slots=True)
class Reply:
    data: bytes


@dataclass(frozen=True, slots=True)
class Authenticate:
    username: str
    password: str
    mechanism: str  # "USER" or "PLAIN"


@dataclass(frozen=True, slots=True)
class SendMessage:
    index: int  # 0-based position in the maildrop snapshot
    uid: str
    body_lines: int | None  # None: the whole message (RETR); n: headers + n lines (TOP)
    status: bytes
    unavailable: bytes


@dataclass(frozen=True, slots=True)
class StartTls:
    pass


@dataclass(frozen=True, slots=True)
class Expunge:
    uids: tuple[str, ...]
    indexes: tuple[int, ...] = ()  # 0-based positions in the snapshot, same order as uids


@dataclass(frozen=True, slots=True)
class Close:
    reason: str


Event = Reply | Authenticate | SendMessage | StartTls | Expunge | Close


def _line(text: str) -> bytes:
    return text.encode("utf-8") + b"\r\n"


def _parse_number(arg: bytes) -> int | None:
    """A message number or line count: ASCII digits only (no sign, no spaces, no '1.5')."""
    if not arg or len(arg) > 10 or not arg.isdigit():
        return None
    return int(arg)


ERR_AUTH = "-ERR [AUTH] Authentication failed"
# LIST and UIDL without an argument build their reply this many messages at a time.
_LISTING_SLICE = 2048


class Pop3Session:
    """One POP3 conversation; see the module docstring for how to drive it."""

    def __init__(
        self,
        *,
        hostname: str,
        tls_available: bool = False,
        tls_active: bool = False,
        require_tls: bool = False,
        max_unknown_commands: int = 10,
    ) -> None:
        self.hostname = hostname
        self.tls_available = tls_available
        self.tls_active = tls_active
        self.require_tls = require_tls
        self.max_unknown_commands = max_unknown_commands
        self.state = State.AUTHORIZATION
        self.waiting = Waiting.NOTHING
        self.username: str | None = None  # the authenticated user, once in TRANSACTION
        self._user_given: str | None = None  # USER seen, PASS expected
        self._unknown = 0
        self._maildrop: Maildrop | None = None
        self._deleted: set[int] = set()
        # STAT, RSET and the login reply answer from these, not a pass over the snapshot.
        self._all_octets = 0
        self._deleted_octets = 0

    # ------------------------------------------------------------------ adapter entry points
    def greeting(self) -> list[Event]:
        # No APOP timestamp banner: APOP needs reversible passwords (RFC 1939 section 7).
        return [Reply(_line(f"+OK {self.hostname} POP3 server ready"))]

    def receive_line(self, line: bytes) -> list[Event]:
        """One line from the client, without its CRLF (or with: it is stripped here)."""
        if self.state is State.CLOSED:
            raise LocalProtocolError("line received after the session was closed")
        if self.waiting not in (Waiting.NOTHING, Waiting.SASL_RESPONSE):
            raise LocalProtocolError(f"line received while waiting for {self.waiting.value}")
        if line.endswith(b"\n"):
            line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if self.waiting is Waiting.SASL_RESPONSE:
            return self._sasl_response(line)
        if len(line) > MAX_COMMAND_LINE:
            return self._unknown_command("Command line too long")
        keyword, _, rest = line.partition(b" ")
        name = keyword.upper().decode("ascii", "replace")
        args = rest.split()
        handler = _HANDLERS.get(name)
        if handler is None:
            return self._unknown_command("Unknown command")
        allowed_states = _ALLOWED.get(name, ())
        if self.state not in allowed_states:
            return [Reply(_line(f"-ERR {name} not valid in the {self.state.value} state"))]
        return handler(self, args, rest)

    def auth_succeeded(self, maildrop: Maildrop, *, username: str) -> list[Event]:
        self._expect(Waiting.AUTH_RESULT)
        self.waiting = Waiting.NOTHING
        self.state = State.TRANSACTION
        self.username = username
        self._maildrop = maildrop
        self._deleted.clear()
        self._all_octets = maildrop.total_octets()
        self._deleted_octets = 0
        count, octets = self._totals()
        return [Reply(_line(f"+OK Logged in, maildrop has {count} messages ({octets} octets)"))]

    def auth_failed(self, reason: AuthFailure) -> list[Event]:
        self._expect(Waiting.AUTH_RESULT)
        self.waiting = Waiting.NOTHING
        if reason is AuthFailure.IN_USE:
            text = "-ERR [IN-USE] Maildrop is locked by another session, try again later"
        elif reason is AuthFailure.TEMPORARY:
            text = "-ERR [SYS/TEMP] Temporary server failure, try again later"
        elif reason is AuthFailure.THROTTLED:
            text = "-ERR [SYS/TEMP] Too many failed logins, try again later"
        else:
            text = ERR_AUTH
        return [Reply(_line(text))]

    def tls_started(self) -> None:
        self._expect(Waiting.TLS)
        self.waiting = Waiting.NOTHING
        self.tls_active = True
        # RFC 2595 section 4: forget everything learnt before TLS (a USER already given).
        self._user_given = None

    def expunge_succeeded(self, removed: int) -> list[Event]:
        self._expect(Waiting.EXPUNGE_RESULT)
        self.waiting = Waiting.NOTHING
        self.state = State.CLOSED
        return [
            Reply(_line(f"+OK {self.hostname} POP3 server signing off ({removed} deleted)")),
            Close("quit"),
        ]

    def expunge_failed(self) -> list[Event]:
        """RFC 1939 section 6: QUIT answers -ERR when deleted messages could not be removed."""
        self._expect(Waiting.EXPUNGE_RESULT)
        self.waiting = Waiting.NOTHING
        self.state = State.CLOSED
        return [
            Reply(_line("-ERR [SYS/TEMP] Some deleted messages were not removed, try again")),
            Close("expunge failed"),
        ]

    def timed_out(self) -> list[Event]:
        """Idle timeout: close without entering UPDATE, so nothing is deleted."""
        self.state = State.CLOSED
        return [Reply(_line("-ERR Disconnected for inactivity")), Close("idle timeout")]

    def shutting_down(self) -> list[Event]:
        """Server shutdown: close without entering UPDATE, so nothing is deleted."""
        self.state = State.CLOSED
        return [Reply(_line("-ERR [SYS/TEMP] Server shutting down, try again")), Close("shutdown")]

    def connection_lost(self) -> None:
        self.state = State.CLOSED
        self._maildrop = None  # the snapshot is not needed any more: let it go

    # ------------------------------------------------------------------ introspection
    @property
    def deleted(self) -> frozenset[int]:
        """0-based indexes marked deleted in this session."""
        return frozenset(self._deleted)

    @property
    def plaintext_allowed(self) -> bool:
        return self.tls_active or not self.require_tls

    # ------------------------------------------------------------------ helpers
    def _expect(self, waiting: Waiting) -> None:
        if self.waiting is not waiting:
            raise LocalProtocolError(
                f"expected to be waiting for {waiting.value}, waiting for {self.waiting.value}"
            )

    def _unknown_command(self, text: str) -> list[Event]:
        self._unknown += 1
        if self._unknown >= self.max_unknown_commands:
            self.state = State.CLOSED
            return [Reply(_line("-ERR Too many invalid commands")), Close("unknown commands")]
        return [Reply(_line(f"-ERR {text}"))]

    def _messages(self) -> Sequence[SnapshotMessage]:
        assert self._maildrop is not None
        return self._maildrop.messages

    def _totals(self) -> tuple[int, int]:
        count = len(self._messages()) - len(self._deleted)
        return count, self._all_octets - self._deleted_octets

    def _message_arg(self, arg: bytes) -> tuple[int, list[Event]]:
        """0-based index for a message-number argument, or -1 and the -ERR to send.

        RFC 1939 section 5: a message-number is 1-based, and may not refer to a message
        marked as deleted."""
        number = _parse_number(arg)
        if number is None:
            return -1, [Reply(_line("-ERR Invalid message number"))]
        if not 1 <= number <= len(self._messages()):
            return -1, [Reply(_line("-ERR No such message"))]
        if number - 1 in self._deleted:
            return -1, [Reply(_line("-ERR Message already deleted"))]
        return number - 1, []

    def _start_auth(self, username: str, password: str, mechanism: str) -> list[Event]:
        self.waiting = Waiting.AUTH_RESULT
        return [Authenticate(username=username, password=password, mechanism=mechanism)]

    def _plaintext_refused(self) -> list[Event] | None:
        if self.plaintext_allowed:
            return None
        # Dovecot's wording and code: clients show it to the user, who then enables TLS.
        return [Reply(_line("-ERR [AUTH] Plaintext authentication disallowed without TLS (STLS)"))]

    # ------------------------------------------------------------------ AUTHORIZATION commands
    def _cmd_user(self, args: list[bytes], rest: bytes) -> list[Event]:
        refused = self._plaintext_refused()
        if refused:
            return refused
        if not rest.strip():
            return [Reply(_line("-ERR Missing user name"))]
        self._user_given = rest.strip().decode("utf-8", "surrogateescape")
        # RFC 1939 allows -ERR for unknown users here; always +OK so the reply to USER never
        # reveals whether a mailbox exists.
        return [Reply(b"+OK\r\n")]

    def _cmd_pass(self, args: list[bytes], rest: bytes) -> list[Event]:
        refused = self._plaintext_refused()
        if refused:
            return refused
        if self._user_given is None:
            return [Reply(_line("-ERR USER first"))]
        username, self._user_given = self._user_given, None
        # The password is the rest of the line, spaces included (RFC 1939 section 7 notes that
        # servers may accept passwords containing spaces).
        password = rest.decode("utf-8", "surrogateescape")
        return self._start_auth(username, password, "USER")

    def _cmd_auth(self, args: list[bytes], rest: bytes) -> list[Event]:
        if not args:
            # Not in RFC 5034, but Outlook and others send a bare AUTH to list mechanisms.
            return [Reply(b"+OK\r\nPLAIN\r\n.\r\n")]
        mechanism = args[0].upper()
        if mechanism != b"PLAIN":
            return [Reply(_line("-ERR Unsupported authentication mechanism"))]
        refused = self._plaintext_refused()
        if refused:
            return refused
        self._user_given = None
        if len(args) > 2:
            return [Reply(_line("-ERR Syntax: AUTH PLAIN [initial-response]"))]
        if len(args) == 1:
            self.waiting = Waiting.SASL_RESPONSE
            return [Reply(b"+ \r\n")]
        # RFC 5034 section 4: "=" is an empty initial response.
        return self._sasl_plain(b"" if args[1] == b"=" else args[1])

    def _sasl_response(self, line: bytes) -> list[Event]:
        self.waiting = Waiting.NOTHING
        if line.strip() == b"*":
            # RFC 5034 section 4: the server MUST reject a cancelled exchange with -ERR.
            return [Reply(_line("-ERR Authentication cancelled"))]
        if len(line) > MAX_SASL_RESPONSE:
            return [Reply(_line(ERR_AUTH))]
        return self._sasl_plain(line.strip())

    def _sasl_plain(self, encoded: bytes) -> list[Event]:
        try:
            decoded = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return [Reply(_line("-ERR [AUTH] Invalid base64 in SASL response"))]
        # RFC 4616 section 2: message = [authzid] NUL authcid NUL passwd
        parts = decoded.split(b"\x00")
        if len(parts) != 3 or not parts[1]:
            return [Reply(_line(ERR_AUTH))]
        authzid, authcid, passwd = (p.decode("utf-8", "surrogateescape") for p in parts)
        # No proxy authorisation: an authzid other than the user itself is refused.
        if authzid and authzid.lower() != authcid.lower():
            return [Reply(_line(ERR_AUTH))]
        return self._start_auth(authcid, passwd, "PLAIN")

    def _cmd_stls(self, args: list[bytes], rest: bytes) -> list[Event]:
        if self.tls_active:
            return [Reply(_line("-ERR TLS is already active"))]
        if not self.tls_available:
            return [Reply(_line("-ERR STLS not available"))]
        self.waiting = Waiting.TLS
        return [Reply(_line("+OK Begin TLS negotiation")), StartTls()]

    # ------------------------------------------------------------------ both states
    def _cmd_capa(self, args: list[bytes], rest: bytes) -> list[Event]:
        lines = ["+OK Capability list follows", "TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE"]
        lines.append("PIPELINING")
        if self.state is State.AUTHORIZATION:
            if self.plaintext_allowed:
                lines += ["USER", "SASL PLAIN"]
            if self.tls_available and not self.tls_active:
                lines.append("STLS")
        lines += ["IMPLEMENTATION Mailhost", "."]
        return [Reply("".join(f"{line}\r\n" for line in lines).encode("ascii"))]

    def _cmd_quit(self, args: list[bytes], rest: bytes) -> list[Event]:
        if self.state is State.AUTHORIZATION:
            self.state = State.CLOSED
            return [Reply(_line(f"+OK {self.hostname} POP3 server signing off")), Close("quit")]
        # RFC 1939 section 6: QUIT from TRANSACTION enters UPDATE and removes marked messages.
        self.state = State.UPDATE
        messages = self._messages()
        indexes = tuple(sorted(self._deleted))
        uids = tuple(messages[i].uid for i in indexes)
        if not uids:
            self.state = State.CLOSED
            return [
                Reply(_line(f"+OK {self.hostname} POP3 server signing off (0 deleted)")),
                Close("quit"),
            ]
        self.waiting = Waiting.EXPUNGE_RESULT
        return [Expunge(uids, indexes)]

    # ------------------------------------------------------------------ TRANSACTION commands
    def _cmd_stat(self, args: list[bytes], rest: bytes) -> list[Event]:
        if args:
            return [Reply(_line("-ERR STAT takes no argument"))]
        count, octets = self._totals()
        return [Reply(_line(f"+OK {count} {octets}"))]

    def _listing(self, args: list[bytes], value: str) -> list[Event]:
        if len(args) > 1:
            return [Reply(_line("-ERR Too many arguments"))]
        messages = self._messages()
        if args:
            index, error = self._message_arg(args[0])
            if error:
                return error
            return [Reply(_line(f"+OK {index + 1} {getattr(messages[index], value)}"))]
        count, octets = self._totals()
        head = f"+OK {count} messages ({octets} octets)\r\n"
        # Encoded a slice at a time: a few thousand short strings alive at once, not one per
        # message (50,000 of them would leave the allocator's arenas fragmented).
        chunks = [head.encode("ascii")]
        deleted = self._deleted
        for start in range(0, len(messages), _LISTING_SLICE):
            stop = min(start + _LISTING_SLICE, len(messages))
            lines = [
                f"{i + 1} {getattr(messages[i], value)}\r\n"
                for i in range(start, stop)
                if i not in deleted
            ]
            chunks.append("".join(lines).encode("utf-8"))
        chunks.append(b".\r\n")
        return [Reply(b"".join(chunks))]

    def _cmd_list(self, args: list[bytes], rest: bytes) -> list[Event]:
        return self._listing(args, "size")

    def _cmd_uidl(self, args: list[bytes], rest: bytes) -> list[Event]:
        return self._listing(args, "uid")

    def _cmd_retr(self, args: list[bytes], rest: bytes) -> list[Event]:
        if len(args) != 1:
            return [Reply(_line("-ERR Syntax: RETR msg"))]
        index, error = self._message_arg(args[0])
        if error:
            return error
        message = self._messages()[index]
        return [
            SendMessage(
                index=index,
                uid=message.uid,
                body_lines=None,
                status=_line(f"+OK {message.size} octets"),
                unavailable=_line("-ERR Message is no longer available"),
            )
        ]

    def _cmd_top(self, args: list[bytes], rest: bytes) -> list[Event]:
        if len(args) != 2:
            return [Reply(_line("-ERR Syntax: TOP msg n"))]
        index, error = self._message_arg(args[0])
        if error:
            return error
        lines = _parse_number(args[1])
        if lines is None:
            return [Reply(_line("-ERR Invalid line count"))]
        message = self._messages()[index]
        return [
            SendMessage(
                index=index,
                uid=message.uid,
                body_lines=lines,
                status=b"+OK\r\n",
                unavailable=_line("-ERR Message is no longer available"),
            )
        ]

    def _cmd_dele(self, args: list[bytes], rest: bytes) -> list[Event]:
        if len(args) != 1:
            return [Reply(_line("-ERR Syntax: DELE msg"))]
        index, error = self._message_arg(args[0])
        if error:
            return error
        # RFC 1939 section 5: DELE only marks; the message goes in the UPDATE state.
        self._deleted.add(index)
        self._deleted_octets += self._messages()[index].size
        return [Reply(_line(f"+OK Message {index + 1} deleted"))]

    def _cmd_noop(self, args: list[bytes], rest: bytes) -> list[Event]:
        return [Reply(b"+OK\r\n")]

    def _cmd_rset(self, args: list[bytes], rest: bytes) -> list[Event]:
        self._deleted.clear()
        self._deleted_octets = 0
        count, octets = self._totals()
        return [Reply(_line(f"+OK Maildrop has {count} messages ({octets} octets)"))]


_A, _T = State.AUTHORIZATION, State.TRANSACTION
_ALLOWED: dict[str, tuple[State, ...]] = {
    "USER": (_A,),
    "PASS": (_A,),
    "AUTH": (_A,),
    "STLS": (_A,),  # RFC 2595 section 4: only in the AUTHORIZATION state
    "CAPA": (_A, _T),
    "QUIT": (_A, _T),
    "STAT": (_T,),
    "LIST": (_T,),
    "UIDL": (_T,),
    "RETR": (_T,),
    "TOP": (_T,),
    "DELE": (_T,),
    "NOOP": (_T,),
    "RSET": (_T,),
}
_HANDLERS = {
    "USER": Pop3Session._cmd_user,
    "PASS": Pop3Session._cmd_pass,
    "AUTH": Pop3Session._cmd_auth,
    "STLS": Pop3Session._cmd_stls,
    "CAPA": Pop3Session._cmd_capa,
    "QUIT": Pop3Session._cmd_quit,
    "STAT": Pop3Session._cmd_stat,
    "LIST": Pop3Session._cmd_list,
    "UIDL": Pop3Session._cmd_uidl,
    "RETR": Pop3Session._cmd_retr,
    "TOP": Pop3Session._cmd_top,
    "DELE": Pop3Session._cmd_dele,
    "NOOP": Pop3Session._cmd_noop,
    "RSET": Pop3Session._cmd_rset,
}
