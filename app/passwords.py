"""Password hashing: argon2 for new hashes, legacy schemes a migrating ISP brings verified."""

from __future__ import annotations

import functools

from passlib.context import CryptContext

# Dovecot writes the scheme in braces before the hash (doc.dovecot.org, "Password schemes");
# the crypt string after it is what passlib understands. Upper-case, as Dovecot prints them.
_DOVECOT_PREFIXES = (
    "{SHA512-CRYPT}",
    "{BLF-CRYPT}",
    "{ARGON2ID}",
    "{ARGON2I}",
    "{MD5-CRYPT}",
    "{CRYPT}",
)

# bcrypt only ever reads the first 72 bytes of a password; the bcrypt >= 5 module raises
# instead of truncating, while the systems we import hashes from (Dovecot, libxcrypt) truncate.
_BCRYPT_MAX_BYTES = 72

# argon2id with the OWASP "minimum" profile (19 MiB, t=2, p=1): about 30 ms here, so a login
# costs little CPU yet an offline guess is memory-hard. Older schemes are only verified; a
# successful login replaces them (``deprecated="auto"``).
_CONTEXT = CryptContext(
    schemes=["argon2", "bcrypt", "sha512_crypt", "md5_crypt"],
    default="argon2",
    deprecated="auto",
    argon2__type="ID",
    argon2__memory_cost=19456,
    argon2__rounds=2,
    argon2__parallelism=1,
)


def _strip_prefix(stored_hash: str) -> str:
    for prefix in _DOVECOT_PREFIXES:
        if stored_hash[: len(prefix)].upper() == prefix:
            return stored_hash[len(prefix) :]
    return stored_hash


def _normalise(stored_hash: str) -> tuple[str, str] | None:
    """(hash passlib can verify, scheme name) or None if we do not know the scheme."""
    bare = _strip_prefix(stored_hash.strip())
    # "$2y$" is PHP/Dovecot's name for the same algorithm as "$2b$" (the 2011 bug fix);
    # passlib accepts it, but we normalise so every bcrypt backend does.
    if bare.startswith("$2y$"):
        bare = "$2b$" + bare[4:]
    try:
        scheme = _CONTEXT.identify(bare, required=False)
    except ValueError:
        return None
    if scheme is None:
        return None
    return bare, str(scheme)


def hash_password(password: str) -> str:
    """A new argon2id hash of ``password``."""
    return str(_CONTEXT.hash(password))


def verify_password(password: str, stored_hash: str) -> tuple[bool, str | None]:
    """Check ``password``; returns (ok, new hash to store if the stored one is deprecated)."""
    normalised = _normalise(stored_hash)
    if normalised is None:
        # Unknown or corrupt hash: refuse, but spend the same time as a real check.
        dummy_verify(password)
        return False, None
    bare, scheme = normalised
    secret: str | bytes = password
    if scheme == "bcrypt":
        secret = password.encode("utf-8")[:_BCRYPT_MAX_BYTES]
    try:
        ok = bool(_CONTEXT.verify(secret, bare))
    except (ValueError, TypeError):
        # Malformed hash body (wrong salt length, bad base64...): not a match.
        return False, None
    if not ok:
        return False, None
    # A stored value with a Dovecot prefix is always rewritten: we store bare argon2 hashes.
    if bare != stored_hash or _CONTEXT.needs_update(bare):
        return True, hash_password(password)
    return True, None


@functools.cache
def _dummy_hash() -> str:
    # Made once per process with the current default parameters, so a dummy check costs what
    # the check of a real (up-to-date) mailbox hash costs.
    return hash_password("dummy password for timing equalisation")


def dummy_verify(password: str) -> None:
    """Spend the time of one real verification (for unknown users)."""
    _CONTEXT.verify(password, _dummy_hash())


def is_supported_hash(stored_hash: str) -> bool:
    """Whether ``stored_hash`` is in a scheme we verify (used by CSV import of hashes)."""
    normalised = _normalise(stored_hash)
    if normalised is None:
        return False
    bare, scheme = normalised
    handler = _CONTEXT.handler(scheme)
    try:
        parsed = handler.from_string(bare)
    except (ValueError, TypeError):
        return False
    # A bare salt ("$6$salt") parses as a configuration string, but it has no checksum to
    # verify against: importing it would create a mailbox nobody can log in to.
    return bool(getattr(parsed, "checksum", None))
