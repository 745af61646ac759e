"""Every reply text the submission edge sends, and the one place that gives them enhanced codes.

RFC 4954 (AUTH), RFC 3207 (STARTTLS), RFC 6409 (submission) and RFC 3463 (enhanced codes)
decide the codes; the greeting, EHLO lines and 3xx intermediate replies carry no enhanced code.
"""

from __future__ import annotations

import errno
import re

from app.services.resolution import Verdict

ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}( |$)")

SENDER_OK = "250 2.1.0 Sender ok"
RCPT_OK = "250 2.1.5 Recipient ok"
# RFC 3207 section 4: 530 for a command that needs TLS first.
STARTTLS_FIRST = "530 5.7.0 Must issue a STARTTLS command first"
# RFC 4954 section 6: 530 5.7.0 when AUTH is required for the command.
AUTH_REQUIRED = "530 5.7.0 Authentication required"
# RFC 4954 section 6: 538 5.7.11 the mechanism needs an encrypted connection.
ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"
AUTH_OK = "235 2.7.0 Authentication successful"
# RFC 4954 section 6: 535 5.7.8; the same for an unknown user and a wrong password.
AUTH_INVALID = "535 5.7.8 Authentication credentials invalid"
# RFC 4954 section 6: 454 4.7.0 temporary authentication failure (throttled, database down).
AUTH_THROTTLED = "454 4.7.0 Too many failed logins, try again later"
AUTH_TEMPFAIL = "454 4.7.0 Temporary authentication failure, try again later"
# Sender policy (RFC 3463 5.7.1: delivery not authorized).
SENDER_NOT_OWNED = "553 5.7.1 Sender address rejected: not owned by the authenticated user"
NULL_SENDER = "553 5.7.1 Sender address rejected: the null sender <> is not accepted on submission"
FROM_NOT_OWNED = (
    "550 5.7.1 Message refused: From header address not owned by the authenticated user"
)
FROM_MISSING = "550 5.6.0 Message refused: no From header field (RFC 5322 section 3.6)"
BAD_SENDER = "553 5.1.7 Bad sender address syntax"
BAD_RCPT = "553 5.1.3 Bad recipient address syntax"
# %, !, quotes, source routes and literals: source routing hacks never relayed (RFC 5321 3.6.1).
ROUTING_REFUSED = "553 5.7.1 Recipient address rejected: routing characters are not accepted"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
TEMPFAIL = "451 4.3.0 Temporary failure, please try again later"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
TOO_MANY_CONNECTIONS_IP = "421 4.7.0 Too many connections from your address, try again later"
MAIL_SYSTEM_FULL = "452 4.3.1 Insufficient system storage, please try again later"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"
# RFC 5321 section 4.5.3.2 lets the server close an idle session; saying so first (as the MX
# and Postfix do) tells the client it was a timeout, not a network fault.
IDLE_TIMEOUT = "421 4.4.2 Idle timeout, closing connection"
TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections, try again later"
EXPN_REPLY = "502 5.5.1 EXPN not available"
VRFY_REPLY = "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"

VERDICT_REPLIES: dict[Verdict, str] = {
    Verdict.OK: RCPT_OK,
    Verdict.UNKNOWN_USER: "550 5.1.1 Recipient address rejected: user unknown",
    Verdict.SUSPENDED: "550 5.2.1 Recipient mailbox disabled",
    Verdict.OVER_QUOTA: "452 4.2.2 Mailbox full, try again later",
    Verdict.INVALID_ADDRESS: BAD_RCPT,
    Verdict.NO_POSTMASTER: "550 5.1.1 Recipient address rejected: no postmaster mailbox",
}


def accepted(queue_id: str) -> str:
    return f"250 2.0.0 Ok: queued as {queue_id}"


def sending_disabled(text: str) -> str:
    return f"550 5.7.1 Sending refused: {text}"


def limit_exceeded(text: str) -> str:
    return f"450 4.7.1 {text}"


def storage_failure(error: BaseException) -> str:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return MAIL_SYSTEM_FULL
    return TEMPFAIL


def internal_error(correlation_id: str) -> str:
    return f"451 4.3.0 Internal error, reference {correlation_id}"


_BUILTIN: dict[str, str] = {
    "530 Must issue a STARTTLS command first": STARTTLS_FIRST,
    "500 Command line too long": "500 5.5.2 Line too long",
    "500 Error: bad syntax": "500 5.5.2 Error: bad syntax",
    "221 Bye": "221 2.0.0 Bye",
    "250 OK": "250 2.0.0 Ok",
    "220 Ready to start TLS": "220 2.0.0 Ready to start TLS",
    "454 TLS not available": "454 4.7.0 TLS not available",
    "503 Already authenticated": "503 5.5.1 Already authenticated",
    "501 Not enough value": "501 5.5.4 Syntax: AUTH mechanism [initial-response]",
    "501 Too many values": "501 5.5.4 Syntax: AUTH mechanism [initial-response]",
    "553 5.1.3 Error: malformed address": BAD_RCPT,
    "552 Error: message size exceeds fixed maximum message size": TOO_BIG,
    "552 Error: Too much mail data": TOO_BIG,
    "554 Command refused due to lack of security": "554 5.7.0 Command refused: TLS failed",
}

_DEFAULT_DETAIL = {
    "221": "2.0.0", "250": "2.0.0", "214": "2.0.0", "252": "2.5.2", "421": "4.3.2",
    "451": "4.3.0", "454": "4.7.0", "500": "5.5.2", "501": "5.5.4", "502": "5.5.1",
    "503": "5.5.1", "504": "5.5.4", "530": "5.7.0", "550": "5.0.0", "552": "5.3.4",
    "553": "5.1.3", "554": "5.0.0",
}  # fmt: skip


def with_enhanced_code(reply: str, *, hostname: str) -> str:
    """``reply`` with an RFC 3463 enhanced code if it lacks one (RFC 2034 section 4 exempts
    the greeting, EHLO/HELO replies and 3xx replies)."""
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
    detail = _DEFAULT_DETAIL.get(code) or {"2": "2.0.0", "4": "4.0.0", "5": "5.0.0"}.get(code[:1])
    return f"{code} {detail} {text}" if detail else reply
