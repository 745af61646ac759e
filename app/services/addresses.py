"""Parsing and normalising domain names and mail addresses (the one place that does it)."""

from __future__ import annotations

import re

import idna

from app.errors import ValidationError

# RFC 5321 section 4.5.3.1: local part up to 64 octets, domain up to 255, path up to 256.
MAX_LOCAL_PART = 64
MAX_DOMAIN = 253
MAX_ADDRESS = 254

# Dot-atom local parts only (RFC 5322 section 3.4.1), without '/' (it would be a path
# separator in the Maildir) and without quoted strings, '%' or '!' (source-routing tricks).
_LOCAL_PART = re.compile(r"^[A-Za-z0-9#$&'*+=?^_`{|}~\-]+(\.[A-Za-z0-9#$&'*+=?^_`{|}~\-]+)*$")
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalise_domain(name: str, *, field: str = "domain") -> str:
    """Return the lower-case IDNA (punycode) form of ``name`` or raise ValidationError.

    Accepts Unicode (``bücher.example``) or A-labels; refuses address literals, trailing
    dots, single labels and anything that is not a host name.
    """
    raw = name.strip()
    if not raw:
        raise ValidationError("domain name is empty", field=field)
    if raw.endswith(".") or raw.startswith("[") or ".." in raw:
        raise ValidationError(f"invalid domain name {name!r}", field=field)
    ascii_name = raw.lower() if raw.isascii() else ""
    labels = ascii_name.split(".")
    if not ascii_name or any(label[2:4] == "--" for label in labels):
        # Unicode, or an A-label ("xn--") whose punycode must be checked, or another label
        # with hyphens in the 3rd and 4th position (IDNA 2008 reserves them): the full IDNA
        # (UTS 46) path. Every other ASCII name comes out of it lower-cased and otherwise
        # unchanged, and the label rule below is stricter than IDNA's, so the fast path
        # gives the same answer for a tenth of the time (tests/unit/test_addresses_idna.py).
        try:
            ascii_name = idna.encode(raw, uts46=True).decode("ascii").lower()
        except (idna.IDNAError, UnicodeError) as exc:
            raise ValidationError(f"invalid domain name {name!r}: {exc}", field=field) from exc
        labels = ascii_name.split(".")
    if (
        len(ascii_name) > MAX_DOMAIN
        or len(labels) < 2
        or not all(_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise ValidationError(f"invalid domain name {name!r}", field=field)
    return ascii_name


def domain_to_unicode(name: str) -> str:
    """The Unicode form of an IDNA domain name, for display."""
    try:
        return str(idna.decode(name))
    except (idna.IDNAError, UnicodeError):
        return name


def normalise_local_part(local: str, *, field: str = "address") -> str:
    """Lower-case a valid dot-atom local part, or raise ValidationError."""
    if not local or len(local) > MAX_LOCAL_PART or not _LOCAL_PART.match(local):
        raise ValidationError(f"invalid local part {local!r}", field=field)
    return local.lower()


def split_address(address: str, *, field: str = "address") -> tuple[str, str]:
    """Split and normalise ``local@domain`` into (local part, IDNA domain)."""
    address = address.strip()
    if address.count("@") != 1:
        raise ValidationError(f"invalid address {address!r}", field=field)
    local, domain = address.split("@")
    local_n = normalise_local_part(local, field=field)
    domain_n = normalise_domain(domain, field=field)
    if len(local_n) + 1 + len(domain_n) > MAX_ADDRESS:
        raise ValidationError(f"address {address!r} is too long", field=field)
    return local_n, domain_n


def normalise_address(address: str, *, field: str = "address") -> str:
    local, domain = split_address(address, field=field)
    return f"{local}@{domain}"
