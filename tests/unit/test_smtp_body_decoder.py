"""The incremental DATA decoder (``smtp_ingress.data.BodyDecoder``) against the whole-buffer
decoder it replaces, over every slice boundary: the end-of-data mark, transparency dots, bare
CR / LF and over-long lines split at each position."""

from __future__ import annotations

import pytest

from smtp_ingress.data import MAX_TEXT_LINE, BodyDecoder, BodyError, decode_body

END = b"\r\n.\r\n"


def whole(stream: bytes, *, limit: int | None, normalize: bool) -> tuple[bytes, object, bytes]:
    """What the protocol did before streaming: one search for CRLF.CRLF (after a virtual
    CRLF), the RFC 1870 size of the wire body without its dots, then ``decode_body``."""
    virtual = b"\r\n" + stream
    end = virtual.find(END)
    assert end >= 0
    body, leftover = virtual[2 : end + 2], virtual[end + 5 :]
    size = len(body) - (body.count(b"\r\n.") + (body[:1] == b"."))
    if limit is not None and size > limit:
        return b"", "too big", leftover
    decoded = decode_body(body, normalize_bare_lf=normalize)
    return (decoded.content if decoded.error is None else b""), decoded.error, leftover


def streamed(
    pieces: list[bytes], *, limit: int | None, normalize: bool
) -> tuple[bytes, object, bytes]:
    decoder = BodyDecoder(size_limit=limit, normalize_bare_lf=normalize)
    out = []
    for at, piece in enumerate(pieces):
        out.append(decoder.feed(piece))
        if decoder.done:
            break
    assert decoder.done
    verdict: object = "too big" if decoder.too_big else decoder.error
    # What was not fed stays in the protocol's reader, after the leftover put back there.
    unread = b"".join(pieces[at + 1 :])
    return (b"".join(out) if not decoder.refused else b""), verdict, decoder.leftover + unread


STREAMS = [
    b".\r\n",  # empty message
    b"a\r\n.\r\n",
    b"a\r\nb\r\n.\r\nQUIT\r\n",  # pipelined QUIT after the end
    b"..\r\n...x\r\n.\r\n",  # transparency dots (RFC 5321 4.5.2)
    b"x\r\n..\r\n\r\n.\r\n",
    b"\r\n\r\n\r\n.\r\n",
    b"a\nb\r\n.\r\n",  # bare LF
    b"a\rb\r\n.\r\n",  # bare CR
    b"a\r\r\n.\r\n",
    b"a\n.\n\r\n.\r\n",  # LF.LF is content, not the end (smuggling)
    b"a\r\n.\n.\r\n.\r\n",
    b"a\x00b\r\n.\r\n",
    b"x" * MAX_TEXT_LINE + b"\r\n.\r\n",  # the longest legal line
    b"." + b"x" * MAX_TEXT_LINE + b"\r\n.\r\n",  # one longer on the wire, stuffed
    b"x" * (MAX_TEXT_LINE + 1) + b"\r\n.\r\n",  # one too long
    b"y\r\n" + b"x" * 5000 + b"\r\nz\r\n.\r\n",  # far too long, no LF for a while
    b"y\r\n" + b"x" * 5000 + b"\r\n.\r\nNOOP\r\n",
    b"caf\xc3\xa9\r\n.\r\n",
]


def cuts(stream: bytes) -> list[list[bytes]]:
    """The stream in two pieces at every position, in three around every position, and
    octet by octet."""
    ways = [[stream[:i], stream[i:]] for i in range(len(stream) + 1)]
    ways += [[stream[:i], stream[i : i + 2], stream[i + 2 :]] for i in range(len(stream))]
    ways.append([stream[i : i + 1] for i in range(len(stream))])
    return ways


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("stream", STREAMS)
def test_every_split_decodes_as_the_whole(stream: bytes, normalize: bool) -> None:
    expected = whole(stream, limit=None, normalize=normalize)
    for pieces in cuts(stream):
        assert streamed(pieces, limit=None, normalize=normalize) == expected, pieces


def test_the_oracle_sees_the_faults() -> None:
    # The table above exercises each verdict (so the comparison is not of empty results).
    verdicts = {whole(s, limit=None, normalize=False)[1] for s in STREAMS}
    assert verdicts == {None, BodyError.BARE_NEWLINE, BodyError.NUL, BodyError.LINE_TOO_LONG}
    assert whole(b"a\nb\r\n.\r\n", limit=None, normalize=True)[:2] == (b"a\nb\n", None)


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 5, 6, 9, 11, 12, 14])
def test_size_is_the_message_without_dots_at_every_split(limit: int) -> None:
    # RFC 1870 section 3: "..x" on the wire is the 4-octet line ".x" CRLF; the message is
    # ".x\r\nab\r\n..\r\n" -> 4 + 4 + 4 = 12 octets, 15 on the wire.
    stream = b"..x\r\nab\r\n...\r\n.\r\n"
    expected = whole(stream, limit=limit, normalize=False)
    assert (expected[1] == "too big") == (limit < 12)
    for pieces in cuts(stream):
        assert streamed(pieces, limit=limit, normalize=False) == expected


def test_oversize_wins_over_a_fault_as_before() -> None:
    stream = b"a\nb\r\n" + b"x" * 50 + b"\r\n.\r\n"
    assert streamed([stream[:3], stream[3:]], limit=20, normalize=False)[1] == "too big"


def test_pathological_stream_keeps_memory_bounded() -> None:
    # 2-octet lines and one endless line: the decoder never holds more than a line.
    decoder = BodyDecoder(size_limit=None)
    total = 0
    for _ in range(64):
        total += len(decoder.feed(b"a\r\n" * 20_000 + b"b"))
        assert len(decoder._partial) <= MAX_TEXT_LINE + 3
    assert total == 64 * 40_000 + 63  # every "a\n", and each "b" joined to the next "a"
    long_line = BodyDecoder(size_limit=None)
    for _ in range(100):
        long_line.feed(b"z" * 100_000)
        assert len(long_line._partial) <= MAX_TEXT_LINE + 3
    assert long_line.error is BodyError.LINE_TOO_LONG
    long_line.feed(b"\r")
    assert long_line.feed(b"\n.\r\nQUIT\r\n") == b"" and long_line.done
    assert long_line.leftover == b"QUIT\r\n"
    assert long_line.size == 100 * 100_000 + 2


def test_feed_after_the_end_is_refused() -> None:
    decoder = BodyDecoder(size_limit=None)
    decoder.feed(b".\r\n")
    with pytest.raises(ValueError, match="after the end"):
        decoder.feed(b"x")


def _naive_long_line(content: bytes, max_line: int) -> bool:
    return any(len(line) - (line[:1] == b".") > max_line for line in content.split(b"\n"))


@pytest.mark.parametrize("max_line", [3, 10, MAX_TEXT_LINE])
def test_long_line_scan_matches_the_line_by_line_rule(max_line: int) -> None:
    # Lines of every length around the limit, plain and stuffed, alone and among short ones.
    for length in range(max_line - 2, max_line + 3):
        for line in (b"x" * length, b"." + b"x" * (length - 1), b"." * length):
            for content in (
                line + b"\n",
                b"a\n" + line + b"\n",
                b"a\n" * 700 + line + b"\nb\n",
                line + b"\n" + b"y" * max_line + b"\n",
            ):
                expected = _naive_long_line(content, max_line)
                decoded = decode_body(content.replace(b"\n", b"\r\n"), max_line=max_line)
                assert (decoded.error is BodyError.LINE_TOO_LONG) == expected, content[-40:]
