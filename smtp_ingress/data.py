"""Sans-IO checks and decoding of a DATA body: smuggling, NUL, line length, dot-unstuffing.

Theory of operation: ``decode_body`` validates complete lines with a few whole-buffer scans
in C (``count``, ``split``) instead of a Python loop per line, and returns the content with
LF line endings as Maildir stores it. ``BodyDecoder`` feeds it a DATA stream slice by slice,
finding the only end of DATA, ``CRLF.CRLF`` (RFC 5321 section 4.1.1.4), across slice edges.
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


def _has_long_line(content: bytes, max_line: int) -> bool:
    """Whether a line of ``content`` (LF line endings) is longer than ``max_line``, not
    counting a leading transparency dot (a stuffed line is one octet longer, RFC 5321
    4.5.2). Hops from line start to the last LF within the next ``max_line + 1`` octets,
    so short lines cost no Python work each: about one step per ``max_line`` octets."""
    start, end = 0, len(content)
    while end - start > max_line:
        lf = content.rfind(b"\n", start, start + max_line + 1)
        if lf >= 0:
            start = lf + 1
            continue
        # No LF within max_line + 1 octets: only a stuffed line of exactly that length
        # (and its LF right after) is legal.
        lf = content.find(b"\n", start)
        length = (end if lf < 0 else lf) - start - (content[start : start + 1] == b".")
        if length > max_line:
            return True
        start = end if lf < 0 else lf + 1
    return False


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
    content = body.replace(b"\r\n", b"\n")
    # Every CR must belong to a CRLF pair (RFC 5321 section 2.3.8): once the pairs are
    # replaced, any CR left is bare; any LF not in a pair is bare too (unless normalised).
    if b"\r" in content or (not normalize_bare_lf and body.count(b"\n") != body.count(b"\r\n")):
        return DecodedBody(b"", BodyError.BARE_NEWLINE)
    if b"\x00" in content:
        return DecodedBody(b"", BodyError.NUL)
    if _has_long_line(content, max_line):
        return DecodedBody(b"", BodyError.LINE_TOO_LONG)
    if content[:1] == b"." or b"\n." in content:
        # RFC 5321 section 4.5.2: remove the transparency dot, the first octet of every line
        # that starts with one (one C-level replace, not a Python loop per line). With bare
        # LF normalised, a lone "." next to a bare LF is not the end of data but content,
        # and is kept.
        if normalize_bare_lf:
            content = b"\n".join(
                [
                    line[1:] if line[:1] == b"." and len(line) >= 2 else line
                    for line in content.split(b"\n")
                ]
            )
        else:
            content = content[content[:1] == b"." :].replace(b"\n.", b"\n")
    return DecodedBody(content)


# Slices of the DATA stream handed to ``BodyDecoder.feed`` at most this large: each slice
# is decoded by the C scans above in about 1 ms (ordinary lines) to 4 ms (2-octet lines, the
# worst case: bench/smtp_large.py), and the protocol yields to the event loop between slices,
# so one pathological message cannot stall other clients.
DATA_SLICE = 64 * 1024
_END_MARK = b"\r\n.\r\n"


class BodyDecoder:
    """Incremental, sans-IO form of ``decode_body`` over a DATA stream fed in slices.

    Theory of operation: ``_partial`` holds the octets since the last line end (at most one
    line: a line longer than any legal one is refused and dropped at once), so the memory
    used is one slice plus about 1,000 octets whatever the line structure. Each ``feed``
    finds the end of data (``CRLF.CRLF``, with a virtual CRLF before the first octet: RFC
    5321 section 4.1.1.4) in the partial line plus the new slice, so a mark split across
    slices at any position is found; otherwise the complete lines are cut off at the last LF
    and decoded by ``decode_body`` (its result over whole lines does not depend on where the
    stream is cut). The size is counted as RFC 1870 section 3 does (CRLF line endings,
    transparency dots not counted) over every line, also after a refusal, so an oversized
    message is answered 552 whatever else is wrong with it, as before. The first refusal
    found stops decoding; the rest is only scanned for the end of data.

    ``feed`` returns the decoded octets of the slice (LF line endings, possibly empty);
    once ``done`` is true, ``leftover`` holds what followed the end of data (pipelined
    commands, which the protocol puts back in front of its reader).
    """

    def __init__(
        self,
        *,
        size_limit: int | None,
        max_line: int = MAX_TEXT_LINE,
        normalize_bare_lf: bool = False,
    ) -> None:
        self._limit = size_limit or None
        self._max_line = max_line
        self._normalize = normalize_bare_lf
        self._partial = b""
        self._after_crlf = True  # the virtual CRLF before the first line
        self.size = 0  # RFC 1870 size of the lines seen so far
        self.error: BodyError | None = None
        self.too_big = False
        self.done = False
        self.leftover = b""

    @property
    def refused(self) -> bool:
        return self.too_big or self.error is not None

    def feed(self, data: bytes) -> bytes:
        if self.done:
            raise ValueError("feed() after the end of data")
        scan_from = max(0, len(self._partial) - 1)  # _partial holds no LF: the mark can
        buf = self._partial + data  # only start at its last octet (a CR)
        if self._after_crlf and buf[:3] == b".\r\n":
            end = 0
        else:
            end = buf.find(_END_MARK, scan_from)
            if end >= 0:
                end += 2  # the CRLF before the dot belongs to the body
        if end >= 0:
            self.done = True
            self.leftover = buf[end + 3 :]
            self._partial = b""
            return self._lines(buf[:end])
        cut = buf.rfind(b"\n") + 1
        self._partial = buf[cut:]
        out = self._lines(buf[:cut]) if cut else b""
        # No line end in the partial line: past the longest legal line (a transparency dot
        # and CRLF more than max_line) it is refused, and only its last octet is kept, which
        # may be the CR starting the end-of-data mark.
        if len(self._partial) > self._max_line + 3:
            self._count(self._partial[:-1])
            self._refuse(BodyError.LINE_TOO_LONG)
            self._partial = self._partial[-1:]
            self._after_crlf = False
        return out

    def _count(self, lines: bytes) -> None:
        dots = lines.count(b"\r\n.") + (self._after_crlf and lines[:1] == b".")
        self.size += len(lines) - dots
        if self._limit is not None and self.size > self._limit:
            self.too_big = True

    def _refuse(self, error: BodyError) -> None:
        if self.error is None:
            self.error = error

    def _lines(self, lines: bytes) -> bytes:
        """Decode complete lines (empty, or ending in LF), or nothing once refused."""
        if not lines:
            return b""
        self._count(lines)
        self._after_crlf = lines[-2:] == b"\r\n"
        if self.refused:
            return b""
        decoded = decode_body(lines, max_line=self._max_line, normalize_bare_lf=self._normalize)
        if decoded.error is not None:
            self._refuse(decoded.error)
            return b""
        return decoded.content
