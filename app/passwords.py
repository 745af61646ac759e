"""Password hashing: argon2 for new hashes, legacy schemes a migrating ISP brings verified."""

from __future__ import annotations

# Implemented by the core-services work: a passlib CryptContext (argon2 default; sha512_crypt,
# bcrypt ($2y$), md5_crypt accepted and deprecated), Dovecot scheme prefixes such as
# {SHA512-CRYPT}, {BLF-CRYPT}, {ARGON2ID}, {MD5-CRYPT} stripped before verifying.


def hash_password(password: str) -> str:
    """A new argon2id hash of ``password``."""
    raise NotImplementedError


def verify_password(password: str, stored_hash: str) -> tuple[bool, str | None]:
    """Check ``password``; returns (ok, new hash to store if the stored one is deprecated)."""
    raise NotImplementedError


def dummy_verify(password: str) -> None:
    """Spend the time of one real verification (for unknown users)."""
    raise NotImplementedError


def is_supported_hash(stored_hash: str) -> bool:
    """Whether ``stored_hash`` is in a scheme we verify (used by CSV import of hashes)."""
    raise NotImplementedError
