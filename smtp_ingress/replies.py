"""Every reply text the ingress sends, and the one place that gives replies enhanced codes.

RFC 2034 section 4 / RFC 3463: every 2xx, 4xx and 5xx reply carries an enhanced status code,
except the greeting and the replies to HELO / EHLO, whose text must begin with our domain
(RFC 5321 section 4.2 ``Greeting`` and ``ehlo-ok-rsp`` grammar), and intermediate replies
(354), which have no enhanced-code class. aiosmtpd's built-in replies mostly lack one, so
``with_enhanced_code`` rewrites them on their way out (``IngressSMTP.push``).
"""

from __future__ import annotations

import errno
import re

from app.services.resolution import Verdict

ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")

# --- replies of our own ---------------------------------------------------------------------
SENDER_OK = "250 2.1.0 Sender ok"
RCPT_OK = "250 2.1.5 Recipient ok"
RSET_OK = "250 2.0.0 Ok"
NOOP_OK = "250 2.0.0 Ok"
VRFY_REPLY = "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
HELP_REPLY = "214 2.0.0 See RFC 5321"
EXPN_REPLY = "502 5.5.1 EXPN not available"
AUTH_REPLY = "502 5.5.1 AUTH not available on this MX"
UNKNOWN_COMMAND = "500 5.5.2 Error: command not recognized"
SYNTAX_ERROR = "501 5.5.4 Syntax error in parameters or arguments"
BAD_SENDER = "553 5.1.7 Bad sender address syntax"
BAD_RCPT = "553 5.1.3 Bad recipient address syntax"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
RELAY_DENIED = "554 5.7.1 Relay access denied"
TEMPFAIL = "451 4.3.0 Temporary failure, please try again later"
NEED_RCPT = "503 5.5.1 Error: need RCPT command"
DATA_SYNTAX = "501 5.5.4 Syntax: DATA"
DATA_START = "354 End data with <CR><LF>.<CR><LF>"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
# RFC 5321 section 2.3.8: CR and LF only as CRLF; a bare one is how SMTP smuggling
# (CVE-2023-51764 family) hides a second message. Postfix answers the same code.
BARE_NEWLINE = "554 5.5.2 Message refused: bare CR or LF (RFC 5321 section 2.3.8)"
NUL_IN_DATA = "554 5.6.0 Message refused: NUL octet in message"
# RFC 5321 section 4.5.3.1.6: a text line is at most 1000 octets including CRLF. The reply
# after the final dot must be one of the DATA completion codes of section 4.3.2 (552, 554,
# 451, 452, 450, 550), so 554 rather than the command-line "500 Line too long".
DATA_LINE_TOO_LONG = "554 5.5.2 Message refused: line longer than 998 octets (RFC 5321 4.5.3.1.6)"
# Postfix 3.9's reply for pipelining that RFC 2920 section 3.1 does not allow.
PIPELINING_REFUSED = "554 5.5.0 Error: SMTP protocol synchronization"
EARLY_TALKER = "554 5.5.1 Protocol error: command sent before the greeting"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
TOO_MANY_CONNECTIONS_IP = "421 4.7.0 Too many connections from your address, try again later"
TOO_MANY_ERRORS = "421 4.7.0 Too many errors or junk commands, closing connection"
TOO_MANY_NOOPS = (
    "421 4.7.0 Too many NOOP, RSET or VRFY commands without a message, closing connection"
)
IDLE_TIMEOUT = "421 4.4.2 Idle timeout, closing connection"
DATA_TIMEOUT = "421 4.4.2 DATA deadline exceeded, closing connection"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
# After DATA, when every recipient's mailbox was deleted during the transaction (or within the
# resolution cache's lifetime before RCPT): no copy is kept. RFC 5321 section 4.2.5 lets the
# reply after the final dot refuse the whole message, and here the whole message reached
# nobody, so the sender gets the bounce it would have got at RCPT time instead of a 250 for
# mail that no one can ever read. 5.1.1: the recipient address no longer exists.
RECIPIENTS_GONE = "550 5.1.1 Recipient mailbox no longer exists, message not delivered"
NO_POSTMASTER = "550 5.1.1 Recipient address rejected: no postmaster mailbox is configured"


def delivered(queue_id: str) -> str:
    return f"250 2.0.0 Ok: delivered as {queue_id}"


# RFC 3463 section 3.4: X.3.1 "Mail system full", the temporary answer for a full disk or an
# exhausted quota of the file system holding the Maildirs (RFC 5321 section 4.2.2: 452).
MAIL_SYSTEM_FULL = "452 4.3.1 Insufficient system storage, please try again later"
_STORAGE_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def delivery_failure(error: BaseException) -> str:
    """The reply after DATA when storing failed: 452 4.3.1 for a full disk, else 451 4.3.0."""
    if isinstance(error, OSError) and error.errno in _STORAGE_FULL:
        return MAIL_SYSTEM_FULL
    return TEMPFAIL


def internal_error(correlation_id: str) -> str:
    # Never the exception text: the correlation id finds the traceback in our log.
    return f"451 4.3.0 Internal error, reference {correlation_id}"


# RCPT verdicts -> replies: the one mapping of resolution outcomes to the wire.
VERDICT_REPLIES: dict[Verdict, str] = {
    Verdict.OK: RCPT_OK,
    Verdict.UNKNOWN_USER: "550 5.1.1 Recipient address rejected: user unknown",
    Verdict.SUSPENDED: "550 5.2.1 Recipient mailbox disabled",
    Verdict.OVER_QUOTA: "452 4.2.2 Mailbox full, try again later",
    Verdict.UNKNOWN_DOMAIN: RELAY_DENIED,
    Verdict.INVALID_ADDRESS: RELAY_DENIED,
    # RFC 5321 section 4.5.1 wants postmaster deliverable: this is an operator's fault
    # (Settings.postmaster_address unset or not a hosted mailbox), and the text says so.
    Verdict.NO_POSTMASTER: NO_POSTMASTER,
}

# aiosmtpd built-ins (exact text, or prefix ending in a space) -> our replies.
_BUILTIN: dict[str, str] = {
    "500 Command line too long": "500 5.5.2 Line too long (RFC 5321 section 4.5.3.1.4)",
    "500 Error: bad syntax": "500 5.5.2 Error: bad syntax",
    "500 Error: strict ASCII mode": "500 5.5.2 Error: 8-bit command without SMTPUTF8",
    "221 Bye": "221 2.0.0 Bye",
    "250 OK": "250 2.0.0 Ok",
    "220 Ready to start TLS": "220 2.0.0 Ready to start TLS",
    "454 TLS not available": "454 4.7.0 TLS not available",
    "503 Error: nested MAIL command": "503 5.5.1 Error: nested MAIL command",
    "503 Error: need MAIL command": "503 5.5.1 Error: need MAIL command",
    "503 Error: need RCPT command": NEED_RCPT,
    "553 5.1.3 Error: malformed address": BAD_RCPT,
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG,
    "552 Error: Too much mail data": TOO_BIG,
}

# Default enhanced code per basic code (RFC 3463) for anything not in the table.
_DEFAULT_DETAIL: dict[str, str] = {
    "211": "2.0.0",
    "214": "2.0.0",
    "221": "2.0.0",
    "250": "2.0.0",
    "251": "2.1.5",
    "252": "2.5.2",
    "421": "4.3.2",
    "450": "4.2.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}


def with_enhanced_code(reply: str, *, hostname: str) -> str:
    """Return ``reply`` with an RFC 3463 enhanced code inserted if it lacks one.

    Exempt (RFC 2034 section 4): the greeting and HELO/EHLO replies (they start with our
    host name, or are EHLO keyword lines), and 3xx intermediate replies.
    """
    if ENHANCED.match(reply):
        return reply
    known = _BUILTIN.get(reply)
    if known is not None:
        return known
    code, text = reply[:3], reply[4:]
    if (
        code[0] == "3"
        or reply[3:4] == "-"
        or reply == "250 HELP"
        or (code in ("220", "250") and (text == hostname or text.startswith(hostname + " ")))
    ):
        return reply
    if reply.startswith("501 Syntax") or reply.startswith("501 Error"):
        return f"501 5.5.4 {text}"
    detail = _DEFAULT_DETAIL.get(code)
    if detail is None:
        detail = {"2": "2.0.0", "4": "4.0.0", "5": "5.0.0"}.get(code[:1])
    return f"{code} {detail} {text}" if detail else reply
