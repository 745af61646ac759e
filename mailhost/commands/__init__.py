"""The ``mailhost`` sub-commands, one module per entity, each adding its parsers in ``register``.

Every provisioning command runs in one transaction with the CLI actor (so it is audited like any
other door), prints only after the commit succeeded, and touches message files only after the
commit (a removed mailbox's Maildir goes once the row is gone, never before). A Maildir that
cannot be removed is a warning on stderr with its path, and the exit status stays 0: the removal
itself happened. Errors are raised, never printed: ``mailhost.cli.main`` maps them to one line
and an exit status in one place.
"""

from __future__ import annotations

from typing import Any

from mailhost.commands import (
    aliases,
    customer_admins,
    customers,
    dkim,
    domains,
    mailboxes,
    operators,
    queue,
    relay,
    scanning,
    selfservice,
    sending,
    system,
    tokens,
    tracking,
)


def register(subparsers: Any) -> None:
    """Add every command to the top-level sub-parsers, in the order ``--help`` lists them."""
    system.register(subparsers)
    customers.register(subparsers)
    domains.register(subparsers)
    mailboxes.register(subparsers)
    aliases.register(subparsers)
    operators.register(subparsers)
    tokens.register(subparsers)
    dkim.register(subparsers)  # under "domain": after the domain group exists
    queue.register(subparsers)
    relay.register(subparsers)
    sending.register(subparsers)  # under "mailbox" and "customer"
    scanning.register(subparsers)  # under "domain" and "customer"
    tracking.register(subparsers)
    customer_admins.register(subparsers)  # issue 15; "operator totp" under "operator"
    selfservice.register(subparsers)  # under "mailbox": forward, autoreply
