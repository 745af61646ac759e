"""The errors services raise; each edge maps them to its own wire format in one place."""

from __future__ import annotations

import datetime as dt


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


class SendingDisabled(MailhostError):  # noqa: N818  (the name the submission edge maps)
    """The mailbox may not send at all: ``may_send`` is off, or the mailbox, its domain or its
    customer is suspended. The submission edge answers ``550 5.7.1``."""

    @property
    def text(self) -> str:
        return self.message


class SendLimitExceeded(MailhostError):  # noqa: N818
    """One more message would pass a sending limit; the edge answers ``450 4.7.1 <text>``.

    ``scope`` is "mailbox" or "customer", ``metric`` "messages_hour" or "recipients_day",
    ``name`` the mailbox address or customer name, ``count`` what was sent in the window
    that ends at ``retry_at`` (when sending is possible again), ``limit`` the limit."""

    def __init__(
        self,
        message: str,
        *,
        scope: str,
        metric: str,
        name: str,
        count: int,
        limit: int,
        retry_at: dt.datetime,
    ) -> None:
        super().__init__(message, field=metric)
        self.scope = scope
        self.metric = metric
        self.name = name
        self.count = count
        self.limit = limit
        self.retry_at = retry_at

    @property
    def text(self) -> str:
        return self.message
