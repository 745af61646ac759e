"""The server secret: the setting wins; otherwise one generated file, the same for everyone."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.config import Settings
from app.secret_key import DEFAULT_FILE_NAME, SecretKeyError, load_secret_key
from app.services.idempotency import request_fingerprint


def _settings(tmp_path: Path, **extra: object) -> Settings:
    return Settings(maildir_root=tmp_path / "mail", _env_file=None, **extra)  # type: ignore[call-arg, arg-type]


def test_generated_once_in_the_maildir_root_private_and_stable(tmp_path: Path) -> None:
    first = load_secret_key(_settings(tmp_path))
    path = tmp_path / "mail" / DEFAULT_FILE_NAME
    assert path.read_text().strip().encode() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    # Another worker or host sharing the Maildir root reads the same key.
    assert load_secret_key(_settings(tmp_path)) == first
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_the_setting_wins_and_a_short_key_is_refused(tmp_path: Path) -> None:
    key = "k" * 40
    assert load_secret_key(_settings(tmp_path, secret_key=SecretStr(key))) == key.encode()
    assert not (tmp_path / "mail" / DEFAULT_FILE_NAME).exists()
    with pytest.raises(SecretKeyError):
        load_secret_key(_settings(tmp_path, secret_key=SecretStr("short")))
    own = tmp_path / "own-key"
    own.write_text("tiny\n")
    with pytest.raises(SecretKeyError):
        load_secret_key(_settings(tmp_path, secret_key_file=own))


SECRET = b"s" * 32


def _fp(**body: object) -> str:
    return request_fingerprint(
        secret=SECRET,
        method="POST",
        path="/api/v1/mailboxes",
        body_fields=body,
        secret_fields={"password"},
    )


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ({"address": "a@x", "password": "p1"}, {"password": "p1", "address": "a@x"}, True),
        ({"address": "a@x", "password": "p1"}, {"address": "a@x", "password": "p2"}, False),
        ({"address": "a@x", "password": "p1"}, {"address": "b@x", "password": "p1"}, False),
        ({"address": "a@x", "password": None}, {"address": "a@x"}, False),
    ],
)
def test_fingerprint_equal_requests_and_only_those(
    a: dict[str, object], b: dict[str, object], same: bool
) -> None:
    assert (_fp(**a) == _fp(**b)) is same


def test_fingerprint_depends_on_method_path_body_presence_and_secret() -> None:
    base = {"secret": SECRET, "secret_fields": (), "body_fields": None}
    one = request_fingerprint(method="POST", path="/a", **base)  # type: ignore[arg-type]
    assert one != request_fingerprint(method="POST", path="/b", **base)  # type: ignore[arg-type]
    assert one != request_fingerprint(method="PUT", path="/a", **base)  # type: ignore[arg-type]
    assert one != request_fingerprint(
        secret=SECRET, method="POST", path="/a", body_fields={}, secret_fields=()
    )
    assert one != request_fingerprint(
        secret=b"t" * 32, method="POST", path="/a", body_fields=None, secret_fields=()
    )
