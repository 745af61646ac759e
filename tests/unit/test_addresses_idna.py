"""The ASCII fast path of ``normalise_domain`` gives exactly what the full IDNA path gives."""

from __future__ import annotations

import idna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import ValidationError
from app.services import addresses


def _full_idna(name: str) -> str | None:
    """The rule before the fast path: every name through idna.encode (UTS 46); None = refused."""
    raw = name.strip()
    if not raw or raw.endswith(".") or raw.startswith("[") or ".." in raw:
        return None
    try:
        ascii_name = idna.encode(raw, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError):
        return None
    labels = ascii_name.split(".")
    if (
        len(ascii_name) > addresses.MAX_DOMAIN
        or len(labels) < 2
        or not all(addresses._LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        return None
    return ascii_name


def _ours(name: str) -> str | None:
    try:
        return addresses.normalise_domain(name)
    except ValidationError:
        return None


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Hosted.EXAMPLE", "hosted.example"),
        ("  hosted.example ", "hosted.example"),
        ("a-b.example", "a-b.example"),
        ("ab--cd.example", None),  # hyphens in 3rd and 4th position: IDNA refuses
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),  # a valid A-label
        ("XN--BCHER-KVA.example", "xn--bcher-kva.example"),
        ("xn--zz.example", None),  # not valid punycode
        ("bücher.example", "xn--bcher-kva.example"),
        ("under_score.example", None),
        ("-lead.example", None),
        ("trail-.example", None),
        ("single", None),
        ("host.123", None),
        ("a" * 64 + ".example", None),
        (".".join(["a" * 63] * 4), None),  # 255 octets
        ("sp ace.example", None),
        ("hosted.example.", None),
        ("[127.0.0.1]", None),
    ],
)
def test_domain_table(name: str, expected: str | None) -> None:
    assert _ours(name) == expected
    assert _full_idna(name) == expected


_ASCII_LABEL = st.text(alphabet="abcXYZ019-_x.n", min_size=1, max_size=12)


@settings(max_examples=3000, deadline=None)
@given(st.lists(_ASCII_LABEL, min_size=1, max_size=4).map(".".join))
def test_fast_path_agrees_with_full_idna_on_ascii(name: str) -> None:
    assert _ours(name) == _full_idna(name)
