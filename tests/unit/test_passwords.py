"""Password schemes: argon2 for new hashes, legacy hashes verified and upgraded on login."""

from __future__ import annotations

import bcrypt
import pytest
from passlib.hash import md5_crypt, sha512_crypt

from app.passwords import dummy_verify, hash_password, is_supported_hash, verify_password

PASSWORD = "correct horse battery"


def _bcrypt(password: str, ident: str) -> str:
    # The real bcrypt module (as Dovecot's doveadm would produce), re-labelled $2y$ as PHP does.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return ident + hashed[4:]


LEGACY = {
    "SHA512-CRYPT prefixed": lambda p: "{SHA512-CRYPT}" + sha512_crypt.using(rounds=5000).hash(p),
    "plain $6$": lambda p: sha512_crypt.using(rounds=5000).hash(p),
    "BLF-CRYPT $2y$": lambda p: "{BLF-CRYPT}" + _bcrypt(p, "$2y$"),
    "plain $2y$": lambda p: _bcrypt(p, "$2y$"),
    "plain $2b$": lambda p: _bcrypt(p, "$2b$"),
    "plain $1$": lambda p: md5_crypt.hash(p),
    "MD5-CRYPT prefixed": lambda p: "{MD5-CRYPT}" + md5_crypt.hash(p),
    "ARGON2ID prefixed": lambda p: "{ARGON2ID}" + hash_password(p),
}


def test_new_hashes_are_argon2id_and_salted() -> None:
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first.startswith("$argon2id$")
    assert first != second
    assert verify_password(PASSWORD, first) == (True, None)
    assert verify_password("wrong password", first) == (False, None)


@pytest.mark.parametrize("scheme", sorted(LEGACY))
def test_legacy_hash_verifies_and_is_rehashed_to_argon2(scheme: str) -> None:
    stored = LEGACY[scheme](PASSWORD)
    assert is_supported_hash(stored)
    ok, new_hash = verify_password(PASSWORD, stored)
    assert ok
    assert new_hash is not None and new_hash.startswith("$argon2id$")
    assert verify_password(PASSWORD, new_hash) == (True, None)
    assert verify_password(PASSWORD + "x", stored) == (False, None)


def test_weaker_argon2_parameters_are_upgraded() -> None:
    from passlib.hash import argon2

    weak = argon2.using(type="ID", memory_cost=1024, rounds=1, parallelism=1).hash(PASSWORD)
    ok, new_hash = verify_password(PASSWORD, weak)
    assert ok and new_hash is not None and new_hash != weak


def test_bcrypt_long_password_is_truncated_like_every_bcrypt() -> None:
    # bcrypt reads 72 bytes; the bcrypt>=5 module raises instead of truncating.
    long = "p" * 100
    stored = bcrypt.hashpw(long.encode()[:72], bcrypt.gensalt(rounds=4)).decode()
    assert verify_password(long, stored)[0]
    assert verify_password("p" * 72 + "different tail", stored)[0]
    assert not verify_password("p" * 71, stored)[0]


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "plaintext",
        "{PLAIN}secret",
        "{SSHA}abcdef",
        "$6$saltonly",
        "$6$rounds=5000$salt$tooshort",
        "$2y$04$short",
        "$argon2id$v=19$m=19456,t=2,p=1$bad",
    ],
)
def test_unsupported_or_malformed_hashes_never_verify(stored: str) -> None:
    assert not is_supported_hash(stored)
    assert verify_password(PASSWORD, stored) == (False, None)
    assert verify_password("", stored) == (False, None)


def test_dummy_verify_uses_a_hash_with_the_current_cost_parameters() -> None:
    """Same algorithm and cost as a real mailbox hash, so the same time (no timed assertion:
    the cost is fixed by the parameters, which is what an attacker's stopwatch measures)."""
    from app.passwords import _dummy_hash

    dummy_verify(PASSWORD)
    params = hash_password(PASSWORD).rsplit("$", 2)[0]
    assert _dummy_hash().rsplit("$", 2)[0] == params
    assert params.startswith("$argon2id$v=19$m=19456,t=2,p=1")
