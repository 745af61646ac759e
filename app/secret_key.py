"""The server secret: ``MAILHOST_SECRET_KEY``, or a file generated once and shared by all hosts.

Precedence: the ``secret_key`` setting; else the file ``secret_key_file``; else the file
``<maildir_root>/.mailhost-secret-key``. The Maildir root is the one place every SMTP, POP3 and
web host of a scale-out already shares, so the generated secret is the same everywhere without
configuration; it is never in the database, so a reader of the database (a dump, a backup, a
replica) cannot use it. The file is created at first use, mode 0600, atomically (written to a
temporary name, then hard-linked into place), so concurrent first starts agree on one secret.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from app.config import Settings
from app.errors import MailhostError

DEFAULT_FILE_NAME = ".mailhost-secret-key"
# 32 random bytes in URL-safe base64 when generated; an operator's own key must be as long.
MIN_LENGTH = 32


class SecretKeyError(MailhostError):
    """The configured secret key is missing, unreadable or too short."""


def secret_key_path(settings: Settings) -> Path:
    return settings.secret_key_file or settings.maildir_root / DEFAULT_FILE_NAME


def _checked(text: str, where: str) -> bytes:
    key = text.strip()
    if len(key) < MIN_LENGTH:
        raise SecretKeyError(f"the secret key in {where} is shorter than {MIN_LENGTH} characters")
    return key.encode("utf-8")


def load_secret_key(settings: Settings) -> bytes:
    """The server secret as bytes; generates the key file when neither key nor file exists."""
    if settings.secret_key is not None:
        return _checked(settings.secret_key.get_secret_value(), "MAILHOST_SECRET_KEY")
    path = secret_key_path(settings)
    try:
        return _checked(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
        # link() fails if another process won the race: then its key is the key.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return _checked(path.read_text(encoding="utf-8"), str(path))
