"""The errors services raise; each edge maps them to its own wire format in one place."""

from __future__ import annotations


class MailhostError(Exception):
    """Base of every error a service raises on purpose. ``field`` names the input at fault."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ValidationError(MailhostError):
    """Input is malformed (bad address, bad domain name, negative quota...)."""


class NotFoundError(MailhostError):
    """The named object does not exist."""


class ConflictError(MailhostError):
    """The object already exists, or the change clashes with existing data."""


class LimitExceededError(MailhostError):
    """A configured limit (mailboxes per domain, total quota...) would be exceeded."""


class PermissionDeniedError(MailhostError):
    """The actor may not do this (role or scope)."""


class TemporaryError(MailhostError):
    """A transient server-side failure (database unreachable, disk full): retry later."""
