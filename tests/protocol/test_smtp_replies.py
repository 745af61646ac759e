"""The reply-code table: each row is a prelude (each step must succeed), one input, and the
exact reply expected, over a raw socket against a real ingress. After each row the session
must still answer RSET with 250 (unless the row closes it), which also proves that nothing a
smuggling payload hid after a fake end-of-data was executed as commands."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.maildir import MaildirStore
from tests.protocol.smtp_helpers import ADDRESSES, IngressThread, RawClient, new_messages

MAX_SIZE = 64 * 1024
HOST = "mx.test.example"

EHLO = ["EHLO client.example"]
MAIL = [*EHLO, "MAIL FROM:<sender@remote.example>"]
RCPT = [*MAIL, "RCPT TO:<user@hosted.example>"]
DATA = [*RCPT, "DATA"]

MSG = b"From: sender@remote.example\r\nSubject: table\r\n\r\nbody\r\n"
# A message of exactly MAX_SIZE octets (RFC 1870 counts CRLF, not transparency dots) whose
# lines all start with "." (dot-stuffed on the wire, 655 octets more than MAX_SIZE).
_DOT_LINE = b"." + b"d" * 97 + b"\r\n"
AT_LIMIT_DOTS = _DOT_LINE * 655 + b"." + b"e" * (MAX_SIZE - 655 * 100 - 3) + b"\r\n"
assert len(AT_LIMIT_DOTS) == MAX_SIZE


def _stuffed(message: bytes) -> bytes:
    """RFC 5321 section 4.5.2 transparency: a line starting with "." gets one more."""
    lines = message.split(b"\r\n")
    return b"\r\n".join(b"." + line if line[:1] == b"." else line for line in lines)


SMUGGLED = (
    b"MAIL FROM:<admin@hosted.example>\r\nRCPT TO:<user@hosted.example>\r\nDATA\r\n"
    b"Subject: smuggled\r\n\r\nevil\r\n.\r\n"
)


@dataclass(frozen=True)
class Row:
    name: str
    prelude: list[str]
    send: str | bytes  # str: a command line (CRLF added); bytes: sent as is
    expect: str  # exact prefix of the reply
    stored: int = 0  # messages expected to arrive in new/ of ``mailbox``
    survives: bool = True
    mailbox: str = "user"  # key of ADDRESSES
    # "default": no platform postmaster configured; "pm": postmaster_address=PLATFORM_PM;
    # "lf": smtp_bare_lf="normalize"
    server: str = "default"


# The platform postmaster of the "pm" server (Settings.postmaster_address).
PLATFORM_PM = ADDRESSES["other"]
SYNC = "554 5.5.0 Error: SMTP protocol synchronization"
NO_PM = "550 5.1.1 Recipient address rejected: no postmaster mailbox is configured"


ROWS = [
    # --- greeting, HELO/EHLO, session commands
    Row("helo", [], "HELO client.example", f"250 {HOST}"),
    Row("ehlo", [], "EHLO client.example", f"250-{HOST}"),
    Row("helo without name", [], "HELO", "501 5.5.4 "),
    Row("mail before helo", [], "MAIL FROM:<a@remote.example>", "503 5.5.1 "),
    Row("unknown command", EHLO, "FROB x", "500 5.5.2 "),
    Row("empty line", EHLO, "", "500 5.5.2 "),
    Row("command line over 512", EHLO, "NOOP " + "x" * 600, "500 5.5.2 "),
    Row("command line over 1001", EHLO, "NOOP " + "x" * 5000, "500 5.5.2 "),
    Row("8-bit command", EHLO, "NOOP caf\u00e9".encode() + b"\r\n", "500 5.5.2 "),
    Row("noop", EHLO, "NOOP", "250 2.0.0 "),
    Row("rset", MAIL, "RSET", "250 2.0.0 "),
    Row("vrfy does not enumerate", EHLO, "VRFY user@hosted.example", "252 2.5.2 "),
    Row("expn", EHLO, "EXPN team", "502 5.5.1 "),
    Row("help", EHLO, "HELP", "214 2.0.0 "),
    Row("no auth on the MX", EHLO, "AUTH PLAIN AGEAYg==", "502 5.5.1 "),
    Row("starttls without certificate", EHLO, "STARTTLS", "454 4.7.0 "),
    Row("quit", EHLO, "QUIT", "221 2.0.0 ", survives=False),
    # --- pipelining (RFC 2920 section 3.1; Postfix 3.9 smtpd_forbid_unauth_pipelining)
    Row(
        "ehlo ends a group",
        [],
        b"EHLO c.example\r\nMAIL FROM:<a@remote.example>\r\n",
        SYNC,
        survives=False,
    ),
    Row(
        "noop ends a group", EHLO, b"NOOP\r\nMAIL FROM:<a@remote.example>\r\n", SYNC, survives=False
    ),
    Row("vrfy ends a group", EHLO, b"VRFY user\r\nNOOP\r\n", SYNC, survives=False),
    Row("content before 354", RCPT, b"DATA\r\n" + MSG + b".\r\n", SYNC, survives=False),
    Row(
        "no pipelining without EHLO",
        ["HELO client.example"],
        b"MAIL FROM:<a@remote.example>\r\nRCPT TO:<user@hosted.example>\r\n",
        SYNC,
        survives=False,
    ),
    # --- MAIL
    Row("mail", EHLO, "MAIL FROM:<sender@remote.example>", "250 2.1.0 "),
    Row("mail null sender", EHLO, "MAIL FROM:<>", "250 2.1.0 "),
    Row("mail declared size ok", EHLO, "MAIL FROM:<s@remote.example> SIZE=1000", "250 2.1.0 "),
    Row(
        "mail declared size too big",
        EHLO,
        f"MAIL FROM:<s@remote.example> SIZE={MAX_SIZE + 1}",
        "552 5.3.4 ",
    ),
    Row("mail 8bitmime", EHLO, "MAIL FROM:<s@remote.example> BODY=8BITMIME", "250 2.1.0 "),
    Row("mail unknown parameter", EHLO, "MAIL FROM:<s@remote.example> FOO=BAR", "555 5.5.4 "),
    Row("mail without colon", EHLO, "MAIL <s@remote.example>", "501 5.5.4 "),
    Row("mail smtputf8 not offered", EHLO, "MAIL FROM:<s@remote.example> SMTPUTF8", "501 5.5.4 "),
    Row("nested mail", MAIL, "MAIL FROM:<s@remote.example>", "503 5.5.1 "),
    # --- RCPT policy
    Row("rcpt before mail", EHLO, "RCPT TO:<user@hosted.example>", "503 5.5.1 "),
    Row("rcpt mailbox", MAIL, "RCPT TO:<user@hosted.example>", "250 2.1.5 "),
    Row("rcpt upper-case address", MAIL, "RCPT TO:<USER@HOSTED.EXAMPLE>", "250 2.1.5 "),
    Row("rcpt alias", MAIL, "RCPT TO:<team@hosted.example>", "250 2.1.5 "),
    Row("rcpt domain alias", MAIL, "RCPT TO:<user@alias.example>", "250 2.1.5 "),
    Row("rcpt catch-all", MAIL, "RCPT TO:<anyone@catchall.example>", "250 2.1.5 "),
    Row("rcpt postmaster", MAIL, "RCPT TO:<postmaster@hosted.example>", "250 2.1.5 "),
    Row("rcpt unknown user", MAIL, "RCPT TO:<nobody@hosted.example>", "550 5.1.1 "),
    # RFC 5321 4.5.1 / 4.1.1.3: postmaster of every hosted domain, and <Postmaster> bare
    Row("bare postmaster, none configured", MAIL, "RCPT TO:<Postmaster>", NO_PM),
    Row(
        "empty domain's postmaster, none configured",
        MAIL,
        "RCPT TO:<postmaster@empty.example>",
        NO_PM,
    ),
    Row(
        "empty domain, other user",
        MAIL,
        "RCPT TO:<nobody@empty.example>",
        "550 5.1.1 Recipient address rejected: user unknown",
    ),
    Row("bare postmaster", MAIL, "RCPT TO:<Postmaster>", "250 2.1.5 ", server="pm"),
    Row("bare postmaster, upper case", MAIL, "RCPT TO:<POSTMASTER>", "250 2.1.5 ", server="pm"),
    Row("bare postmaster, lower case", MAIL, "RCPT TO:<postmaster>", "250 2.1.5 ", server="pm"),
    Row(
        "empty domain's postmaster",
        MAIL,
        "RCPT TO:<postmaster@empty.example>",
        "250 2.1.5 ",
        server="pm",
    ),
    Row(
        "empty domain, other user, postmaster configured",
        MAIL,
        "RCPT TO:<nobody@empty.example>",
        "550 5.1.1 Recipient address rejected: user unknown",
        server="pm",
    ),
    Row(
        "message to bare postmaster",
        [*MAIL, "RCPT TO:<Postmaster>", "DATA"],
        MSG + b".\r\n",
        "250 2.0.0 ",
        stored=1,
        mailbox="other",
        server="pm",
    ),
    Row(
        "message to an empty domain's postmaster",
        [*MAIL, "RCPT TO:<postmaster@empty.example>", "DATA"],
        MSG + b".\r\n",
        "250 2.0.0 ",
        stored=1,
        mailbox="other",
        server="pm",
    ),
    Row(
        "postmaster with an empty domain", MAIL, "RCPT TO:<Postmaster@>", "553 5.1.3 ", server="pm"
    ),
    Row(
        "bare postmaster is not a relay",
        MAIL,
        "RCPT TO:<postmaster%foreign.example>",
        "554 5.7.1 ",
        server="pm",
    ),
    Row("rcpt suspended mailbox", MAIL, "RCPT TO:<frozen@hosted.example>", "550 5.2.1 "),
    Row("rcpt suspended domain", MAIL, "RCPT TO:<someone@closed.example>", "550 5.2.1 "),
    Row("rcpt over quota", MAIL, "RCPT TO:<full@hosted.example>", "452 4.2.2 "),
    # Valid RFC 5321 Dot-strings our mailbox grammar refuses ("/"): never "relay denied".
    Row("rcpt slash local part", MAIL, "RCPT TO:<a/b@hosted.example>", "550 5.1.1 "),
    Row(
        "rcpt slash local part, catch-all",
        MAIL,
        "RCPT TO:<customer/department=shipping@catchall.example>",
        "550 5.1.1 ",
    ),
    Row("rcpt foreign domain", MAIL, "RCPT TO:<user@foreign.example>", "554 5.7.1 "),
    Row("rcpt foreign upper-case", MAIL, "RCPT TO:<USER@FOREIGN.EXAMPLE>", "554 5.7.1 "),
    Row(
        "relay: source route",
        MAIL,
        "RCPT TO:<@hosted.example:user@foreign.example>",
        "554 5.7.1 ",
    ),
    Row("relay: percent hack", MAIL, "RCPT TO:<user%foreign.example@hosted.example>", "554 5.7.1 "),
    Row("relay: bang path", MAIL, "RCPT TO:<foreign.example!user@hosted.example>", "554 5.7.1 "),
    Row(
        "relay: quoted local part",
        MAIL,
        'RCPT TO:<"user@foreign.example"@hosted.example>',
        "554 5.7.1 ",
    ),
    Row("relay: address literal", MAIL, "RCPT TO:<user@[127.0.0.1]>", "554 5.7.1 "),
    # Trailing dot: not RFC 5321 syntax, refused as malformed (see smtp_ingress.handler).
    Row("trailing-dot hosted domain", MAIL, "RCPT TO:<user@hosted.example.>", "553 5.1.3 "),
    Row("trailing-dot foreign domain", MAIL, "RCPT TO:<user@foreign.example.>", "553 5.1.3 "),
    Row("rcpt null path", MAIL, "RCPT TO:<>", "553 5.1.3 "),
    Row("rcpt without colon", MAIL, "RCPT <user@hosted.example>", "501 5.5.4 "),
    Row("rcpt unknown parameter", MAIL, "RCPT TO:<user@hosted.example> FOO=1", "555 5.5.4 "),
    Row(
        "101st recipient",
        MAIL + ["RCPT TO:<user@hosted.example>"] * 100,
        "RCPT TO:<other@hosted.example>",
        "452 4.5.3 ",
    ),
    # --- DATA
    Row("data before rcpt", MAIL, "DATA", "503 5.5.1 "),
    Row("data with argument", RCPT, "DATA now", "501 5.5.4 "),
    Row("message", DATA, MSG + b".\r\n", "250 2.0.0 ", stored=1),
    Row("empty message", DATA, b".\r\n", "250 2.0.0 ", stored=1),
    Row("dot-stuffed line", DATA, MSG + b"..dot\r\n.\r\n", "250 2.0.0 ", stored=1),
    Row("998-octet line", DATA, b"x" * 998 + b"\r\n.\r\n", "250 2.0.0 ", stored=1),
    Row("999-octet line", DATA, b"x" * 999 + b"\r\n.\r\n", "554 5.5.2 "),
    Row("5000-octet line", DATA, b"y" * 5000 + b"\r\n.\r\n", "554 5.5.2 "),
    Row("actual size too big", DATA, (b"z" * 1000 + b"\r\n") * 70 + b".\r\n", "552 5.3.4 "),
    # RFC 1870 section 3: transparency dots are not part of the message size.
    Row("size limit exactly, dot lines", DATA, _stuffed(AT_LIMIT_DOTS) + b".\r\n", "250 2.0.0 ", 1),
    Row("size limit + 1, dot lines", DATA, _stuffed(b"f" + AT_LIMIT_DOTS) + b".\r\n", "552 5.3.4 "),
    Row("smuggling \\n.\\n", DATA, MSG + b"hi\n.\n" + SMUGGLED, "554 5.5.2 "),
    Row("smuggling \\n.\\r\\n", DATA, MSG + b"hi\n.\r\n" + SMUGGLED, "554 5.5.2 "),
    Row("smuggling \\r.\\r\\n", DATA, MSG + b"hi\r.\r\n" + SMUGGLED, "554 5.5.2 "),
    Row("smuggling \\r\\n.\\n", DATA, MSG + b"hi\r\n.\n" + SMUGGLED, "554 5.5.2 "),
    Row("smuggling \\r\\n.\\r", DATA, MSG + b"hi\r\n.\r" + SMUGGLED, "554 5.5.2 "),
    Row("bare LF in body", DATA, MSG + b"a\nb\r\n.\r\n", "554 5.5.2 "),
    Row("bare CR in body", DATA, MSG + b"a\rb\r\n.\r\n", "554 5.5.2 "),
    Row("NUL in body", DATA, MSG + b"nul\x00here\r\n" + SMUGGLED, "554 5.6.0 "),
    # --- MAILHOST_SMTP_BARE_LF=normalize (Postfix 3.9 smtpd_forbid_bare_newline=normalize)
    Row("normalize: bare LF", DATA, MSG + b"a\nb\r\n.\r\n", "250 2.0.0 ", 1, server="lf"),
    # Only CRLF.CRLF ends DATA: what follows "\n.\n" is content, one message, no commands.
    Row("normalize: \\n.\\n", DATA, MSG + b"hi\n.\n" + SMUGGLED, "250 2.0.0 ", 1, server="lf"),
    Row("normalize: \\r\\n.\\n", DATA, MSG + b"hi\r\n.\n" + SMUGGLED, "250 2.0.0 ", 1, server="lf"),
    Row("normalize: bare CR", DATA, MSG + b"a\rb\r\n.\r\n", "554 5.5.2 ", server="lf"),
    Row("normalize: NUL", DATA, MSG + b"\x00\r\n.\r\n", "554 5.6.0 ", server="lf"),
]


def test_smtp_reply_table(
    smtp_world: None, smtp_start: Callable[..., IngressThread], store: MaildirStore
) -> None:
    servers = {
        "default": smtp_start(smtp_max_message_size=MAX_SIZE),
        "pm": smtp_start(smtp_max_message_size=MAX_SIZE, postmaster_address=PLATFORM_PM),
        "lf": smtp_start(smtp_max_message_size=MAX_SIZE, smtp_bare_lf="normalize"),
    }
    failures: list[str] = []
    for row in ROWS:
        before = len(new_messages(store, ADDRESSES[row.mailbox]))
        client = RawClient(servers[row.server].port)
        client.sock.settimeout(5)
        try:
            for step in row.prelude:
                got = client.cmd(step)
                if got[:1] not in "23":
                    failures.append(f"{row.name}: prelude {step[:40]!r} got {got!r}")
                    break
            else:
                got = client.cmd(row.send if isinstance(row.send, bytes) else row.send)
                if not got.startswith(row.expect):
                    failures.append(f"{row.name}: expected {row.expect!r}, got {got!r}")
                if row.survives:
                    after = client.cmd("RSET")
                    if not after.startswith("250 2.0.0"):
                        failures.append(f"{row.name}: session did not survive: {after!r}")
                elif not client.closed_by_server():
                    failures.append(f"{row.name}: connection left open")
        except OSError as exc:
            failures.append(f"{row.name}: {exc!r}")
        finally:
            client.close()
        stored = len(new_messages(store, ADDRESSES[row.mailbox])) - before
        if stored != row.stored:
            failures.append(f"{row.name}: {stored} messages stored, expected {row.stored}")
    assert not failures, "\n".join(failures)


def test_smtp_ehlo_keywords(smtp_server: IngressThread) -> None:
    client = RawClient(smtp_server.port)
    assert client.greeting.startswith(f"220 {HOST} ")
    lines = client.cmd("EHLO client.example").splitlines()
    client.close()
    keywords = {line[4:].split()[0] for line in lines[1:]}
    assert {"SIZE", "8BITMIME", "PIPELINING", "ENHANCEDSTATUSCODES"} <= keywords
    assert "STARTTLS" not in keywords  # no certificate configured
    assert "AUTH" not in keywords
    assert "SIZE 52428800" in [line[4:] for line in lines]
