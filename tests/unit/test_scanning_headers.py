"""app.scanning without scanners: header rewriting, Authentication-Results, verdicts (tables)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.maildir import MailboxRef, MaildirStore
from app.maildir_stream import deliver_spooled, spool_body
from app.scanning import headers
from app.scanning.clients import RspamdResult, parse_address
from app.scanning.decision import Action, ScanPolicy, decide

ID = "mx.example"


@pytest.mark.parametrize(
    ("field", "removed"),
    [
        (b"Authentication-Results: mx.example; spf=pass\n", True),
        (b"Authentication-Results: MX.EXAMPLE; spf=pass\n", True),
        (b"Authentication-Results:   mx.example 1; dkim=pass\n", True),  # version number
        (b"Authentication-Results: (comment) mx.example;\n\tspf=pass\n", True),
        (b"authentication-results:mx.example; none\n", True),
        (b"Authentication-Results: mx.example.evil; spf=pass\n", False),
        (b"Authentication-Results: other.example; spf=pass smtp.mailfrom=mx.example\n", False),
        (b"X-Authentication-Results: mx.example; spf=pass\n", False),
    ],
)
def test_strip_forged(field: bytes, removed: bool) -> None:
    head = b"From: a@b.example\n" + field + b"Subject: s\n"
    new, count = headers.strip_forged(head, ID)
    assert count == (1 if removed else 0)
    assert (new == b"From: a@b.example\nSubject: s\n") is removed
    assert new.endswith(b"Subject: s\n")


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"Subject: Hi\n", b"Subject: [SPAM] Hi\n"),
        (b"Subject: [SPAM] Hi\n", b"Subject: [SPAM] Hi\n"),
        (b"Subject:Hi\n\tthere\n", b"Subject: [SPAM] Hi\n\tthere\n"),
        (b"From: a@b.example\n", b"From: a@b.example\nSubject: [SPAM]\n"),
    ],
)
def test_tag_subject(head: bytes, expected: bytes) -> None:
    assert headers.tag_subject(head, "[SPAM]") == expected


@pytest.mark.parametrize(
    ("content", "head"),
    [
        (b"Subject: x\nFrom: y\n\nbody\n", b"Subject: x\nFrom: y\n"),
        (b"Subject: x\n", b"Subject: x\n"),  # no body at all
        (b"no header here\n\nbody\n", b""),
        (b"\nbody\n", b""),
    ],
)
def test_split_head(content: bytes, head: bytes) -> None:
    assert headers.split_head(content) == head


def result(score: float, action: str = "no action", **symbols: float) -> RspamdResult:
    return RspamdResult(
        score=score, action=action, symbols={k: (v, ()) for k, v in symbols.items()}
    )


POLICY = ScanPolicy(reject_score=10.0, tag_score=5.0)


@pytest.mark.parametrize(
    ("scan", "virus", "action"),
    [
        (result(1.0), None, Action.ACCEPT),
        (result(5.0), None, Action.TAG),
        (result(10.0), None, Action.REJECT),
        (result(4.5, "greylist"), None, Action.ACCEPT),  # rspamd's score action: ours decide
        (result(12.0, "add header"), None, Action.REJECT),
        (result(0.0, "soft reject"), None, Action.TEMPFAIL),
        (RspamdResult(15.0, "reject", {"GTUBE": (0.0, ())}, skipped=True), None, Action.REJECT),
        (result(-5.0), "Eicar", Action.VIRUS),
        (None, None, Action.ACCEPT),
    ],
)
def test_decide(scan: RspamdResult | None, virus: str | None, action: Action) -> None:
    assert decide(scan, virus, POLICY).action is action


def test_authentication_results_from_rspamd_symbols() -> None:
    scan = RspamdResult(
        1.0,
        "no action",
        {
            "R_SPF_ALLOW": (-0.2, ("+ip4:192.0.2.1",)),
            "R_DKIM_REJECT": (1.0, ("s.example:s=sel",)),
            "DMARC_POLICY_REJECT": (2.0, ()),
        },
    )
    field = headers.authentication_results(
        ID, scan, sender="a@s.example", helo="h", from_domain="s.example"
    )
    assert field == (
        b"Authentication-Results: mx.example;\n\tspf=pass smtp.mailfrom=a@s.example;\n"
        b"\tdkim=fail header.d=s.example;\n\tdmarc=fail header.from=s.example\n"
    )
    assert headers.authentication_results(ID, None, sender="", helo=None, from_domain=None) == (
        b"Authentication-Results: mx.example; none\n"
    )


@pytest.mark.parametrize(
    ("text", "pair"),
    [
        ("127.0.0.1:11333", ("127.0.0.1", 11333)),
        ("http://127.0.0.1:11333/", ("127.0.0.1", 11333)),
        ("scanner.example", ("scanner.example", 3310)),
        ("[::1]:3310", ("::1", 3310)),
    ],
)
def test_parse_address(text: str, pair: tuple[str, int]) -> None:
    assert parse_address(text, 3310) == pair


@pytest.mark.parametrize("memory_limit", [1 << 20, 16])
def test_cut_head_in_memory_and_spilled(tmp_path: Path, memory_limit: int) -> None:
    store = MaildirStore(tmp_path)
    box = MailboxRef(domain="hosted.example", local_part="user")
    body = spool_body(store, box, memory_limit=memory_limit)
    for piece in (b"Subject: a\nFrom: b\n", b"\nline one\n", b"line two\n"):
        body.append(piece)
        if body.needs_flush:
            body.flush()
    assert body.read_all() == b"Subject: a\nFrom: b\n\nline one\nline two\n"
    with pytest.raises(ValueError):
        body.cut_head(b"Subject: b\n")
    body.cut_head(b"Subject: a\nFrom: b\n")
    assert body.read_all() == b"\nline one\nline two\n"
    assert (body.size, body.lines) == (len(b"\nline one\nline two\n"), 3)
    [info] = deliver_spooled(store, [(box, b"Subject: [SPAM] a\nFrom: b\n")], body)
    assert info.path.read_bytes() == b"Subject: [SPAM] a\nFrom: b\n\nline one\nline two\n"
    assert info.size == info.path.stat().st_size
