"""DKIM crypto and formatting: key generation, the DNS TXT record text, signing with dkimpy.

Pure functions without a database. Keys: RSA-2048 (``rsa-sha256``, RFC 6376 section 3.3.3
asks verifiers to accept 512 to 2048 bits; 1024 is breakable, 2048 is what large receivers
expect) or Ed25519 (``ed25519-sha256``, RFC 8463). Private keys are handled as PKCS#8 PEM.
Signatures use relaxed/relaxed canonicalisation (RFC 6376 section 3.4: survives the header
re-folding and trailing-whitespace changes that relays make) and no ``l=`` body length (a
length lets anyone append content after the signed part).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from app.errors import ValidationError
from app.models import DKIM_ED25519_SHA256, DKIM_RSA_SHA256

RSA_BITS = 2048
RSA_PUBLIC_EXPONENT = 65537

# Short names (CLI, portal) and the RFC names (stored, API) of the two algorithms.
_ALGORITHM_NAMES = {
    "rsa": DKIM_RSA_SHA256,
    DKIM_RSA_SHA256: DKIM_RSA_SHA256,
    "ed25519": DKIM_ED25519_SHA256,
    DKIM_ED25519_SHA256: DKIM_ED25519_SHA256,
}
# The k= tag of the key record (RFC 6376 section 3.6.1; RFC 8463 section 4.2).
KEY_TYPE = {DKIM_RSA_SHA256: "rsa", DKIM_ED25519_SHA256: "ed25519"}

# RFC 6376 section 5.4.1's list of header fields to sign when present, plus Sender,
# Message-ID and the MIME fields (changing those changes how the body is read; OpenDKIM
# and dkimpy sign them too), and List-Unsubscribe-Post, which RFC 8058 section 4 requires
# to be signed along with List-Unsubscribe. Never Return-Path, Received, Comments, Keywords
# (section 5.4.1: relays add or change them) nor Bcc.
SIGNED_HEADERS = (
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-id",
    "content-description",
    "resent-date",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-message-id",
    "in-reply-to",
    "references",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
)
# Listed in h= once more than they occur ("oversigned", RFC 6376 section 8.15): a From field
# added in transit then breaks the signature instead of being shown to the reader.
OVERSIGNED_HEADERS = ("from",)

# RFC 6376 section 3.1: a selector is one or more DNS labels. We keep it to one label-ish
# string of at most 63 characters (lower-case letters, digits, hyphens, dots between labels).
MAX_SELECTOR_LENGTH = 63
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")

# RFC 1035 section 3.3.14: one TXT character-string holds at most 255 octets.
TXT_STRING_MAX = 255


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    algorithm: str
    bits: int
    private_key_pem: str
    public_key: str  # the base64 p= value


@dataclass(frozen=True, slots=True)
class SigningKey:
    """What signing needs, detached from the database (an edge may keep it across sessions)."""

    domain: str  # the d= domain, IDNA
    selector: str
    algorithm: str
    private_key_pem: str


def normalise_algorithm(name: str) -> str:
    """'rsa' / 'rsa-sha256' / 'ed25519' / 'ed25519-sha256' (any case) to the RFC name."""
    algorithm = _ALGORITHM_NAMES.get(name.strip().lower())
    if algorithm is None:
        raise ValidationError(
            f"unknown DKIM algorithm {name!r}: use rsa (rsa-sha256) or ed25519 (ed25519-sha256)",
            field="algorithm",
        )
    return algorithm


def check_selector(selector: str) -> str:
    """The selector in lower case, or ValidationError (field 'selector')."""
    value = selector.strip().lower()
    if not value or len(value) > MAX_SELECTOR_LENGTH:
        raise ValidationError(
            f"a selector has 1 to {MAX_SELECTOR_LENGTH} characters", field="selector"
        )
    if not all(_LABEL.match(label) for label in value.split(".")):
        raise ValidationError(
            "a selector is made of DNS labels: letters, digits and hyphens (not at either end), "
            "separated by dots",
            field="selector",
        )
    return value


def generate_key(algorithm: str) -> GeneratedKey:
    """A new key pair for ``algorithm`` (either name form)."""
    algorithm = normalise_algorithm(algorithm)
    pkcs8 = serialization.PrivateFormat.PKCS8
    pem = serialization.Encoding.PEM
    none = serialization.NoEncryption()
    if algorithm == DKIM_RSA_SHA256:
        rsa_key = rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=RSA_BITS)
        # p= is the DER SubjectPublicKeyInfo (RFC 6376 section 3.6.1, as openssl writes it).
        spki = rsa_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return GeneratedKey(
            algorithm=algorithm,
            bits=RSA_BITS,
            private_key_pem=rsa_key.private_bytes(pem, pkcs8, none).decode("ascii"),
            public_key=base64.b64encode(spki).decode("ascii"),
        )
    ed_key = ed25519.Ed25519PrivateKey.generate()
    # RFC 8463 section 4.2: p= is the bare 32-byte public key, base64.
    raw = ed_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return GeneratedKey(
        algorithm=algorithm,
        bits=256,
        private_key_pem=ed_key.private_bytes(pem, pkcs8, none).decode("ascii"),
        public_key=base64.b64encode(raw).decode("ascii"),
    )


def record_name(selector: str, domain: str) -> str:
    """Where the key record lives (RFC 6376 section 3.6.2.1), fully qualified."""
    return f"{selector}._domainkey.{domain.rstrip('.')}."


def record_value(algorithm: str, public_key: str) -> str:
    """The TXT record text: ``v=DKIM1; k=rsa; p=...`` (RFC 6376 section 3.6.1)."""
    return f"v=DKIM1; k={KEY_TYPE[normalise_algorithm(algorithm)]}; p={public_key}"


def zone_file_text(value: str) -> str:
    """``value`` as the quoted character-strings of a zone file's TXT data, split at 255
    octets (RFC 1035 section 3.3.14); a resolver hands them back joined (RFC 6376 3.6.2.2)."""
    data = value.encode("ascii")
    chunks = [data[i : i + TXT_STRING_MAX] for i in range(0, len(data), TXT_STRING_MAX)] or [b""]
    return " ".join(
        '"' + c.decode("ascii").replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks
    )


def headers_to_sign(header_names: Sequence[str]) -> list[str]:
    """The h= list for a message with these header fields (in order): each occurrence of a
    field of SIGNED_HEADERS, then one more of each OVERSIGNED_HEADERS field."""
    lowered = [name.lower() for name in header_names]
    if "from" not in lowered:
        # RFC 6376 section 5.4: the From header field MUST be signed, so it must exist.
        raise ValidationError("a message without a From header field cannot be DKIM-signed")
    signed = [name for name in lowered if name in SIGNED_HEADERS]
    return signed + [name for name in OVERSIGNED_HEADERS if name in lowered]


def _dkimpy_private_key(key: SigningKey) -> bytes:
    """dkimpy takes RSA keys as PEM, Ed25519 keys as the base64 of the 32-byte seed."""
    if key.algorithm == DKIM_RSA_SHA256:
        return key.private_key_pem.encode("ascii")
    loaded = serialization.load_pem_private_key(key.private_key_pem.encode("ascii"), None)
    if not isinstance(loaded, ed25519.Ed25519PrivateKey):
        raise ValidationError("the stored ed25519 key is not an Ed25519 key")
    seed = loaded.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(seed)


def signature_header(message: bytes, key: SigningKey) -> bytes:
    """The ``DKIM-Signature:`` header field for ``message`` (to put above its first line),
    ending with the message's own line ending (CRLF or LF)."""
    first_end = message.find(b"\n")
    linesep = b"\r\n" if first_end > 0 and message[first_end - 1] == 0x0D else b"\n"
    signer = dkimpy.DKIM(
        message, signature_algorithm=key.algorithm.encode("ascii"), linesep=linesep
    )
    names = [name.decode("ascii", "replace") for name, _ in signer.headers]
    try:
        header: bytes = signer.sign(
            key.selector.encode("ascii"),
            key.domain.encode("ascii"),
            _dkimpy_private_key(key),
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=[n.encode("ascii") for n in headers_to_sign(names)],
        )
    except dkimpy.DKIMException as exc:
        raise ValidationError(f"cannot DKIM-sign this message: {exc}") from exc
    if not header.endswith(linesep):
        header = header.rstrip(b"\r\n") + linesep
    return header


def sign_message(message: bytes, key: SigningKey) -> bytes:
    """``message`` with its DKIM-Signature header field prepended."""
    return signature_header(message, key) + message
