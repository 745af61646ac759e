"""app.dkim: keys, record text, header choice, and signatures dkimpy verifies over real DNS."""

from __future__ import annotations

import base64

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from app import dkim
from app.errors import ValidationError
from tests.dkim_helpers import signature_tags, verify
from tests.dnsserver import TestDNSServer

MESSAGE = (
    b"From: Alice <alice@hosted.example>\r\n"
    b"To: bob@remote.example\r\n"
    b"Subject: Quarterly figures\r\n"
    b"Date: Wed, 02 Dec 2026 08:00:00 +0000\r\n"
    b"Message-ID: <1@hosted.example>\r\n"
    b"Received: from client by mx\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"The numbers are up.\r\n"
)


def _key(algorithm: str, selector: str = "sel1") -> tuple[dkim.GeneratedKey, dkim.SigningKey]:
    generated = dkim.generate_key(algorithm)
    return generated, dkim.SigningKey(
        domain="hosted.example",
        selector=selector,
        algorithm=generated.algorithm,
        private_key_pem=generated.private_key_pem,
    )


def _publish(server: TestDNSServer, generated: dkim.GeneratedKey, selector: str = "sel1") -> None:
    server.zone.txt(
        dkim.record_name(selector, "hosted.example"),
        dkim.record_value(generated.algorithm, generated.public_key),
    )


# ------------------------------------------------------------------------------ keys
def test_rsa_key_is_2048_bit_pkcs8_and_p_is_its_public_key() -> None:
    generated = dkim.generate_key("rsa")
    assert (generated.algorithm, generated.bits) == ("rsa-sha256", 2048)
    assert generated.private_key_pem.startswith("-----BEGIN PRIVATE KEY-----")
    private = serialization.load_pem_private_key(generated.private_key_pem.encode(), None)
    assert isinstance(private, rsa.RSAPrivateKey) and private.key_size == 2048
    public = serialization.load_der_public_key(base64.b64decode(generated.public_key))
    assert public.public_numbers() == private.public_key().public_numbers()  # type: ignore[union-attr]


def test_ed25519_p_is_the_raw_32_byte_public_key() -> None:
    generated = dkim.generate_key("ed25519-sha256")
    assert (generated.algorithm, generated.bits) == ("ed25519-sha256", 256)
    private = serialization.load_pem_private_key(generated.private_key_pem.encode(), None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    raw = base64.b64decode(generated.public_key)
    assert raw == private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert len(raw) == 32


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("rsa", "rsa-sha256"),
        ("RSA-SHA256", "rsa-sha256"),
        (" ed25519 ", "ed25519-sha256"),
        ("ed25519-sha256", "ed25519-sha256"),
        ("rsa-sha1", None),
        ("dsa", None),
        ("", None),
    ],
)
def test_algorithm_names(given: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(ValidationError) as err:
            dkim.normalise_algorithm(given)
        assert err.value.field == "algorithm"
    else:
        assert dkim.normalise_algorithm(given) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("mh20261202", "mh20261202"),
        ("Sel-1", "sel-1"),
        ("2026.q4", "2026.q4"),
        ("a" * 63, "a" * 63),
        ("a" * 64, None),
        ("", None),
        ("-sel", None),
        ("sel-", None),
        ("sel_1", None),
        ("sel..x", None),
        ("sel.", None),
        ("sél", None),
        ("sel 1", None),
    ],
)
def test_selector_syntax(given: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(ValidationError) as err:
            dkim.check_selector(given)
        assert err.value.field == "selector"
    else:
        assert dkim.check_selector(given) == expected


# ------------------------------------------------------------------------------ records
def test_record_text_and_name() -> None:
    assert dkim.record_name("sel1", "hosted.example") == "sel1._domainkey.hosted.example."
    assert dkim.record_value("rsa", "QUJD") == "v=DKIM1; k=rsa; p=QUJD"
    assert dkim.record_value("ed25519-sha256", "QUJD") == "v=DKIM1; k=ed25519; p=QUJD"


def test_zone_file_text_splits_at_255_octets_and_parses_back() -> None:
    value = dkim.record_value("rsa", dkim.generate_key("rsa").public_key)
    assert len(value) > 255
    zone = dkim.zone_file_text(value)
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, zone)
    strings = rdata.strings  # type: ignore[attr-defined]
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings)
    assert b"".join(strings).decode() == value
    assert dkim.zone_file_text("v=DMARC1; p=none") == '"v=DMARC1; p=none"'


# ------------------------------------------------------------------------------ headers
@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["From", "To", "Subject"], ["from", "to", "subject", "from"]),
        (
            ["Received", "Return-Path", "From", "Bcc", "Comments", "Keywords", "Date"],
            ["from", "date", "from"],
        ),
        (["From", "From"], ["from", "from", "from"]),
        (
            ["From", "List-Unsubscribe", "List-Unsubscribe-Post", "X-Mailer"],
            ["from", "list-unsubscribe", "list-unsubscribe-post", "from"],
        ),
        (["Reply-To", "FROM", "Cc", "Cc"], ["reply-to", "from", "cc", "cc", "from"]),
    ],
)
def test_headers_to_sign(names: list[str], expected: list[str]) -> None:
    assert dkim.headers_to_sign(names) == expected


def test_a_message_without_from_is_refused() -> None:
    with pytest.raises(ValidationError, match="From"):
        dkim.headers_to_sign(["To", "Subject"])
    _, key = _key("ed25519")
    with pytest.raises(ValidationError, match="From"):
        dkim.signature_header(b"To: bob@remote.example\r\n\r\nhi\r\n", key)


# ------------------------------------------------------------------------------ signing
@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_signature_verifies_with_the_published_record(
    algorithm: str, dns_server: TestDNSServer
) -> None:
    generated, key = _key(algorithm)
    _publish(dns_server, generated)
    signed = dkim.sign_message(MESSAGE, key)
    assert signed.endswith(MESSAGE)
    tags = signature_tags(signed)
    assert tags["a"] == algorithm
    assert tags["c"] == "relaxed/relaxed"
    assert (tags["d"], tags["s"]) == ("hosted.example", "sel1")
    assert tags["h"].split(":") == [
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "from",
    ]
    assert "l" not in tags
    assert verify(signed, dns_server)
    assert ("sel1._domainkey.hosted.example.", "TXT") in dns_server.zone.queries


def test_lf_messages_get_an_lf_signature_that_verifies(dns_server: TestDNSServer) -> None:
    generated, key = _key("ed25519")
    _publish(dns_server, generated)
    message = MESSAGE.replace(b"\r\n", b"\n")
    header = dkim.signature_header(message, key)
    assert header.endswith(b"\n") and b"\r" not in header
    assert verify(header + message, dns_server)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_tampering_breaks_the_signature(algorithm: str, dns_server: TestDNSServer) -> None:
    generated, key = _key(algorithm)
    _publish(dns_server, generated)
    signed = dkim.sign_message(MESSAGE, key)
    assert not verify(signed.replace(b"numbers are up", b"numbers are down"), dns_server)
    assert not verify(signed.replace(b"Quarterly", b"Urgent"), dns_server)
    # From is oversigned: a second From added in transit breaks it too.
    head, body = signed.split(b"\r\n\r\n", 1)
    assert not verify(head + b"\r\nFrom: ceo@hosted.example\r\n\r\n" + body, dns_server)
    # Relaxed canonicalisation: re-folding and trailing spaces do not.
    refolded = signed.replace(b"Subject: Quarterly figures", b"Subject:  Quarterly\r\n\tfigures ")
    assert verify(refolded, dns_server)


def test_a_record_of_another_key_does_not_verify(dns_server: TestDNSServer) -> None:
    _, key = _key("rsa")
    other = dkim.generate_key("rsa")
    _publish(dns_server, other)
    assert not verify(dkim.sign_message(MESSAGE, key), dns_server)
    # ...and no record at all does not either.
    _, unpublished = _key("ed25519", selector="nowhere")
    assert not verify(dkim.sign_message(MESSAGE, unpublished), dns_server)
