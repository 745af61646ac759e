"""The Idempotency-Key request fingerprint: a keyed MAC that keeps no guessable trace of secrets.

A retry with the same key must be recognised as the same request (same method, path and body)
and a different body refused, so a fingerprint of the request is stored with the response. A
plain hash of the body would let anyone who reads the database test password guesses for a
mailbox-create request at hash speed, undoing argon2. So the fingerprint is an HMAC-SHA256
(RFC 2104) under the server secret, which is never in the database, and each secret field
(``password``, ``password_hash``) enters it only as its own HMAC under a key derived for that
purpose, so the MAC'd message never holds the plaintext either.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Collection, Mapping

# Distinct labels derive distinct keys from the one server secret (domain separation), so
# this MAC can never be confused with another use of the secret.
_FINGERPRINT_LABEL = b"mailhost idempotency request fingerprint v1"
_SECRET_FIELD_LABEL = b"mailhost idempotency secret field v1"


def _derived_key(secret: bytes, label: bytes) -> bytes:
    return hmac.new(secret, label, hashlib.sha256).digest()


def request_fingerprint(
    *,
    secret: bytes,
    method: str,
    path: str,
    body_fields: Mapping[str, object] | None,
    secret_fields: Collection[str],
) -> str:
    """64 hex digits identifying the request; equal requests give equal fingerprints.

    ``body_fields`` is the parsed JSON body (None: no body); fields named in
    ``secret_fields`` are replaced by their own keyed hash before the whole is MAC'd.
    """
    field_key = _derived_key(secret, _SECRET_FIELD_LABEL)
    fields: dict[str, object] = {}
    for name, value in (body_fields or {}).items():
        if name in secret_fields and value is not None:
            encoded = json.dumps(value, sort_keys=True).encode("utf-8")
            value = {"hmac": hmac.new(field_key, encoded, hashlib.sha256).hexdigest()}
        fields[name] = value
    message = json.dumps(
        {
            "method": method.upper(),
            "path": path,
            "body": fields if body_fields is not None else None,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    key = _derived_key(secret, _FINGERPRINT_LABEL)
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()
