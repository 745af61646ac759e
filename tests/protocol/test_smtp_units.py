"""Sans-IO parts of the ingress: the DATA body decoder, the enhanced-code rewriter and the
address fast path; the hand-back of executor results to the event loop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from aiosmtpd.smtp import SMTP

from smtp_ingress.data import BodyError, decode_body
from smtp_ingress.handler import LoopCompletions
from smtp_ingress.protocol import IngressSMTP
from smtp_ingress.replies import with_enhanced_code


@pytest.mark.parametrize(
    ("body", "content", "error"),
    [
        (b"", b"", None),
        (b"a\r\nb\r\n", b"a\nb\n", None),
        (b"..x\r\n.\r\n", b".x\n\n", None),  # transparency dot removed (RFC 5321 4.5.2)
        (b"." + b"x" * 998 + b"\r\n", b"x" * 998 + b"\n", None),
        (b"x" * 999 + b"\r\n", b"", BodyError.LINE_TOO_LONG),
        (b"a\nb\r\n", b"", BodyError.BARE_NEWLINE),
        (b"a\rb\r\n", b"", BodyError.BARE_NEWLINE),
        (b"a\r\r\n", b"", BodyError.BARE_NEWLINE),
        (b"a\n\r\n", b"", BodyError.BARE_NEWLINE),
        (b"a\x00\r\n", b"", BodyError.NUL),
        (b"caf\xc3\xa9\r\n", b"caf\xc3\xa9\n", None),
    ],
)
def test_smtp_decode_body(body: bytes, content: bytes, error: BodyError | None) -> None:
    decoded = decode_body(body)
    assert (decoded.content, decoded.error) == (content, error)


@pytest.mark.parametrize(
    ("body", "content", "error"),
    [
        (b"a\r\nb\r\n", b"a\nb\n", None),
        (b"a\nb\r\n", b"a\nb\n", None),  # bare LF ends a line
        (b"a\n.\nb\r\n", b"a\n.\nb\n", None),  # a lone "." is content, not the end
        (b"a\n..x\n.y\r\n", b"a\n.x\ny\n", None),  # transparency dots removed as usual
        (b"a\rb\r\n", b"", BodyError.BARE_NEWLINE),  # bare CR still refused
        (b"a\r\r\n", b"", BodyError.BARE_NEWLINE),
        (b"x" * 999 + b"\n", b"", BodyError.LINE_TOO_LONG),
        (b"a\x00\n", b"", BodyError.NUL),
    ],
)
def test_smtp_decode_body_normalizing_bare_lf(
    body: bytes, content: bytes, error: BodyError | None
) -> None:
    decoded = decode_body(body, normalize_bare_lf=True)
    assert (decoded.content, decoded.error) == (content, error)


@pytest.mark.parametrize(
    ("raw", "sent"),
    [
        ("250 OK", "250 2.0.0 Ok"),
        ("221 Bye", "221 2.0.0 Bye"),
        ("500 Command line too long", "500 5.5.2 Line too long (RFC 5321 section 4.5.3.1.4)"),
        ("503 Error: send HELO first", "503 5.5.1 Error: send HELO first"),
        ("501 Syntax: MAIL FROM: <address>", "501 5.5.4 Syntax: MAIL FROM: <address>"),
        ("550 5.1.1 already has one", "550 5.1.1 already has one"),
        ("220 mx.test.example ESMTP Mailhost", "220 mx.test.example ESMTP Mailhost"),
        ("250 mx.test.example", "250 mx.test.example"),
        ("250-SIZE 100", "250-SIZE 100"),
        ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
        ("599 odd", "599 5.0.0 odd"),
    ],
)
def test_smtp_enhanced_codes(raw: str, sent: str) -> None:
    assert with_enhanced_code(raw, hostname="mx.test.example") == sent


@pytest.mark.parametrize(
    "arg",
    [
        "<a@b.c>",
        "<a@b.c> SIZE=100",
        "<a@b.c>  SIZE=100 BODY=8BITMIME",
        "<User.Name+tag@Hosted.Example>",
        "<a%b@c.d>",
        "<a!b@c.d>",
        "<a/b=c@d.e>",
        "<{x}@b.c>",
        "<a@b>",
        "<a@b.c> ",
        "<a..b@c.d>",
        "<.a@c.d>",
        "<a@b.c.>",
        "<a@-b.c>",
        "<a@[1.2.3.4]>",
        '<"x"@b.c>',
        '<"a@f.e"@b.c>',
        "<@h.e:u@f.e>",
        "<a@b.c>x",
        "<a@b.c>SIZE=1",
        "<a@b.c> (comment)",
        '<a@b.c> X="y"',
        "<a@b..c>",
        "<a@@b.c>",
        "<>",
        "a@b.c",
        "<" + "x" * 65 + "@b.c>",
        # RFC 5321 4.1.1.3: "<Postmaster>" is a valid Forward-path; aiosmtpd 1.4.6 returns
        # "Postmaster" (the handler, not the parser, used to refuse it as a relay attempt).
        "<Postmaster>",
        "<postmaster> SIZE=1",
        "<Postmaster@>",
    ],
)
def test_smtp_fast_address_parse_agrees_with_aiosmtpd(arg: str) -> None:
    # The regular-expression fast path must give exactly what aiosmtpd's parser gives.
    ours = IngressSMTP.__new__(IngressSMTP)
    stock = SMTP.__new__(SMTP)
    ours.local_part_limit = stock.local_part_limit = 64
    assert ours._getaddr(arg) == stock._getaddr(arg)


def test_smtp_bare_postmaster_reaches_the_handler() -> None:
    ours = IngressSMTP.__new__(IngressSMTP)
    ours.local_part_limit = 64
    assert ours._getaddr("<Postmaster>") == ("Postmaster", "")
    assert ours._getaddr("<POSTMASTER> SIZE=1") == ("POSTMASTER", "SIZE=1")


def test_smtp_loop_completions_results_errors_cancellation_and_batching() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        completions = LoopCompletions(loop)
        wakeups = 0
        call_soon_threadsafe = loop.call_soon_threadsafe

        def counting(*args: object) -> object:
            nonlocal wakeups
            wakeups += 1
            return call_soon_threadsafe(*args)  # type: ignore[arg-type]

        loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
        with ThreadPoolExecutor(4) as pool:
            assert await completions.run(pool, lambda a, b: a + b, 2, 3) == 5
            with pytest.raises(OSError, match="disk full"):
                await completions.run(pool, _raise, OSError("disk full"))
            # Four jobs finishing while the loop is blocked: one wake-up hands back all four.
            gate = threading.Event()
            futures = [completions.run(pool, lambda n=n: gate.wait(5) and n) for n in range(4)]
            cancelled = completions.run(pool, gate.wait, 5)
            cancelled.cancel()  # e.g. the connection was lost meanwhile: no error later
            before = wakeups
            gate.set()
            pool.shutdown(wait=True)  # the loop is blocked here while all five finish
            assert await asyncio.gather(*futures) == [0, 1, 2, 3]
            assert wakeups - before == 1
            assert cancelled.cancelled()

    asyncio.run(scenario())


def _raise(error: Exception) -> None:
    raise error
