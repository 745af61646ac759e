"""Sans-IO checks and decoding of a DATA body: smuggling, NUL, line length, dot-unstuffing.

Theory of operation: the protocol reads the whole body up to the first ``CRLF.CRLF`` (the
only end of DATA, RFC 5321 section 4.1.1.4) as one buffer, then ``decode_body`` validates it
with a few whole-buffer scans in C (``count``, ``split``) instead of a Python loop per line,
and returns the content with LF line endings as Maildir stores it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# RFC 5321 section 4.5.3.1.6: 1000 octets per text line including CRLF -> 998 of content.
MAX_TEXT_LINE = 998


class BodyError(enum.Enum):
    BARE_NEWLINE = "bare CR or LF"
    NUL = "NUL octet"
    LINE_TOO_LONG = "line too long"


@dataclass(frozen=True, slots=True)
class DecodedBody:
    content: bytes  # LF line endings, dot-stuffing removed
    error: BodyError | None = None


def decode_body(
    body: bytes, *, max_line: int = MAX_TEXT_LINE, normalize_bare_lf: bool = False
) -> DecodedBody:
    """Validate and decode ``body``: the octets between ``DATA``'s 354 and the final
    ``.CRLF``, i.e. empty or ending in CRLF.

    ``normalize_bare_lf`` is Postfix 3.9's ``smtpd_forbid_bare_newline = normalize``: a bare
    LF ends a content line as CRLF would (only ``CRLF.CRLF`` still ends DATA, the caller
    finds it); without it, a bare LF refuses the message. A bare CR is refused either way:
    no line-ending convention makes it one, and it is half of the smuggling sequences.
    """
    if normalize_bare_lf:
        content = body.replace(b"\r\n", b"\n")
        if b"\r" in content:
            return DecodedBody(b"", BodyError.BARE_NEWLINE)
        lines = content.split(b"\n")
    else:
        lines = body.split(b"\r\n")
        content = b"\n".join(lines)
        # Every CR and every LF must belong to a CRLF pair (RFC 5321 section 2.3.8): once
        # the pairs are split off, any CR left is bare, and any LF beyond the joins was bare.
        if b"\r" in content or content.count(b"\n") != len(lines) - 1:
            return DecodedBody(b"", BodyError.BARE_NEWLINE)
    if b"\x00" in content:
        return DecodedBody(b"", BodyError.NUL)
    if max(map(len, lines)) > max_line:
        # A line may be one octet longer on the wire when it was dot-stuffed (4.5.2).
        for line in lines:
            if len(line) - (line[:1] == b".") > max_line:
                return DecodedBody(b"", BodyError.LINE_TOO_LONG)
    if content[:1] == b"." or b"\n." in content:
        # RFC 5321 section 4.5.2: remove the transparency dot. With bare LF normalised, a
        # lone "." next to a bare LF is not the end of data but content, and is kept.
        shortest = 2 if normalize_bare_lf else 1
        content = b"\n".join(
            [line[1:] if line[:1] == b"." and len(line) >= shortest else line for line in lines]
        )
    return DecodedBody(content)
