"""The Sender Rewriting Scheme for remote forwards (srslib: the Guarded SRS0/SRS1 scheme).

Why SRS: a forwarded message leaves from our hosts, which the original sender's SPF record
does not list; with the original envelope sender the next hop's SPF check fails. SRS rewrites
the envelope sender into an address at the forwarding domain (which does list us), keyed by
an HMAC and a day stamp so nobody can mint addresses that bounce through us:
``SRS0=HHHH=TT=orig-domain=orig-local@forwarding-domain``. Why srslib: a small, typed-enough
library implementing the scheme of the original SRS paper (Shevek), as postsrsd does; the
address shape is the same, so a bounce can be decoded by any SRS implementation with the key.
"""

from __future__ import annotations

import hashlib
import logging

import srslib  # type: ignore[import-untyped]

from app.config import Settings
from app.secret_key import load_secret_key
from app.services.addresses import MAX_LOCAL_PART

log = logging.getLogger(__name__)

# srslib's default: a rewritten address can be reversed (a bounce accepted) for 21 days.
VALIDITY_DAYS = 21


class SrsRewriter:
    """Rewrites envelope senders of remote forwards; one per process, built from settings."""

    def __init__(self, secret: bytes) -> None:
        self._srs = srslib.SRS(secret, validity_days=VALIDITY_DAYS)

    @classmethod
    def from_settings(cls, settings: Settings) -> SrsRewriter:
        if settings.srs_secret is not None:
            return cls(settings.srs_secret.get_secret_value().encode("utf-8"))
        # A key of its own, derived from the server secret (never the secret itself).
        derived = hashlib.sha256(b"mailhost-srs\0" + load_secret_key(settings)).hexdigest()
        return cls(derived.encode("ascii"))

    def forward(self, sender: str, *, domain: str) -> str | None:
        """The SRS address for ``sender`` at ``domain``; "" stays "" (a bounce is never
        rewritten); None when the result would not be a valid address (a local part over
        RFC 5321's 64 octets: the caller then uses an address of its own)."""
        if not sender:
            return ""
        try:
            rewritten = str(self._srs.forward(sender, domain))
        except srslib.Error:
            return None
        if len(rewritten.rpartition("@")[0]) > MAX_LOCAL_PART:
            return None
        return rewritten

    def reverse(self, address: str) -> str | None:
        """The original sender of an SRS address we made (hash and age checked), else None."""
        try:
            return str(self._srs.reverse(address))
        except (srslib.Error, ValueError):
            return None

    @staticmethod
    def is_srs(address: str) -> bool:
        return bool(srslib.SRS.is_srs_address(address, strict=False))
