"""Sans-IO message work for submission: line endings, the header fields we read, the ones we add.

RFC 6409 section 8: a submission server MAY add ``Date`` and ``Message-ID`` when missing (we
do: many phone clients omit ``Message-ID``) and must not rewrite the rest; we only ever
prepend fields (``Received``, ``Message-ID``, ``Date``, ``DKIM-Signature``), never change one.
"""

from __future__ import annotations

import email.utils
import secrets
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32


def to_crlf(content: bytes) -> bytes:
    """The message with CRLF line endings everywhere (aiosmtpd keeps what the client sent)."""
    return content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def to_lf(message: bytes) -> bytes:
    """CRLF to LF, as the Maildir store keeps messages."""
    return message.replace(b"\r\n", b"\n")


@dataclass(frozen=True, slots=True)
class HeaderFacts:
    """What policy needs from the header: the From addresses, and what is missing."""

    from_addresses: tuple[str, ...]
    has_message_id: bool
    has_date: bool


def header_block(message: bytes) -> bytes:
    """The header section of a CRLF message (without the empty line)."""
    if message.startswith(b"\r\n"):
        return b""
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 2]


def inspect_header(message: bytes) -> HeaderFacts:
    """Parse the header section (RFC 5322 section 3.6) of a CRLF message."""
    parsed = BytesHeaderParser(policy=compat32).parsebytes(header_block(message))
    froms = [str(value) for value in parsed.get_all("From", [])]
    addresses = tuple(
        address.strip() for _, address in email.utils.getaddresses(froms) if address.strip()
    )
    return HeaderFacts(
        from_addresses=addresses,
        has_message_id=parsed.get("Message-ID") is not None,
        has_date=parsed.get("Date") is not None,
    )


def received_field(
    *,
    helo: str,
    client_ip: str,
    hostname: str,
    protocol: str,
    queue_id: str,
    authenticated: str,
    cipher: str | None,
    date: str,
) -> bytes:
    """An RFC 5321 section 4.4 trace field; RFC 4954 section 7 lets the authenticated
    identity appear (never the password); ``protocol`` is ESMTPSA or ESMTPA (RFC 3848)."""
    tls = f"\r\n\t(using {cipher})" if cipher else ""
    text = (
        f"Received: from {helo} ([{client_ip}])\r\n"
        f"\t(authenticated sender: {authenticated})\r\n"
        f"\tby {hostname} (Mailhost) with {protocol} id {queue_id}{tls};\r\n"
        f"\t{date}\r\n"
    )
    return text.encode("utf-8", "surrogateescape")


def missing_fields(facts: HeaderFacts, *, hostname: str, date: str) -> bytes:
    """``Message-ID`` and ``Date`` when the client sent none (RFC 6409 section 8.2 / 8.3)."""
    added = b""
    if not facts.has_message_id:
        added += f"Message-ID: <{secrets.token_hex(12)}@{hostname}>\r\n".encode("ascii")
    if not facts.has_date:
        added += f"Date: {date}\r\n".encode("ascii")
    return added
