"""``mailhost mailbox sending`` and ``mailhost customer sending``: may_send, limits, usage.

Hooked under the existing ``mailbox`` and ``customer`` groups by ``register`` (called after
they exist). Without options the command shows the controls and what was sent in the current
windows; with options it changes them (validated first, audited) and shows the result.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from app.models import utcnow
from app.services import customers, mailboxes
from app.services import sending_admin as admin
from app.services.audit import CLI_ACTOR
from app.services.sending import SendingLimits
from app.services.sending_admin import UNSET, LimitChange, SendingStatus, Usage
from mailhost.context import Context


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def _limit(text: str | None, field: str) -> LimitChange:
    return UNSET if text is None else admin.parse_limit(text, field=field)


def _usage(prefix: str, usage: Usage) -> dict[str, Any]:
    return {
        f"{prefix}_limit": usage.limit,
        f"{prefix}_own_limit": "default" if usage.own is None else usage.own,
        f"{prefix}_used": usage.used,
    }


def _mailbox_row(address: str, status: SendingStatus) -> dict[str, Any]:
    return {
        "address": address,
        "may_send": status.may_send,
        **_usage("messages_per_hour", status.messages_per_hour),
        **_usage("recipients_per_day", status.recipients_per_day),
        "sending_limited": status.limited,
        "limited_since": _iso(status.limited_since) if status.limited else None,
        "limited_until": _iso(status.limited_until) if status.limited else None,
        "limited_reason": status.limited_reason if status.limited else None,
    }


def mailbox_sending(ctx: Context, args: argparse.Namespace) -> int:
    limits = SendingLimits.from_settings(ctx.settings)
    messages = _limit(args.max_messages_per_hour, "max_messages_per_hour")
    recipients = _limit(args.max_recipients_per_day, "max_recipients_per_day")
    with ctx.transaction() as s:
        m = mailboxes.get_mailbox_by_address(s, address=args.address)
        if (
            args.may_send is not None
            or messages is not UNSET
            or recipients is not UNSET
            or (args.clear_flag)
        ):
            admin.set_mailbox_sending(
                s,
                actor=CLI_ACTOR,
                mailbox_id=m.id,
                may_send=args.may_send,
                max_messages_per_hour=messages,
                max_recipients_per_day=recipients,
                clear_flag=args.clear_flag,
            )
        status = admin.mailbox_sending_status(s, mailbox_id=m.id, now=utcnow(), limits=limits)
        row = _mailbox_row(m.address, status)
    ctx.print_record(row, as_json=args.json)
    return 0


def customer_sending(ctx: Context, args: argparse.Namespace) -> int:
    limits = SendingLimits.from_settings(ctx.settings)
    messages = _limit(args.max_messages_per_hour, "max_messages_per_hour")
    recipients = _limit(args.max_recipients_per_day, "max_recipients_per_day")
    with ctx.transaction() as s:
        c = customers.get_customer_by_name(s, name=args.name)
        if messages is not UNSET or recipients is not UNSET:
            admin.set_customer_limits(
                s,
                actor=CLI_ACTOR,
                customer_id=c.id,
                max_messages_per_hour=messages,
                max_recipients_per_day=recipients,
            )
        hourly, daily = admin.customer_sending_usage(
            s, customer_id=c.id, now=utcnow(), limits=limits
        )
        row = {"name": c.name, **_usage("messages_per_hour", hourly)}
        row.update(_usage("recipients_per_day", daily))
    ctx.print_record(row, as_json=args.json)
    return 0


def _subcommands(parser: argparse.ArgumentParser) -> Any:
    """The sub-command action of ``parser`` (argparse offers no public accessor)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise LookupError(f"{parser.prog} has no sub-commands")


def _limit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-messages-per-hour",
        metavar="N",
        help="messages per UTC clock hour; 'default' inherits the platform's",
    )
    p.add_argument(
        "--max-recipients-per-day",
        metavar="N",
        help="recipients per UTC day; 'default' inherits the platform's",
    )
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")


def register(subparsers: Any) -> None:
    """Add ``sending`` under the existing ``mailbox`` and ``customer`` commands."""
    help_ = "show or change whether and how much the mailbox may send (submission)"
    p: argparse.ArgumentParser = _subcommands(subparsers.choices["mailbox"]).add_parser(
        "sending", help=help_, description=help_
    )
    p.set_defaults(handler=mailbox_sending)
    p.add_argument("address")
    p.add_argument("--may-send", dest="may_send", action="store_true", default=None)
    p.add_argument(
        "--no-may-send", dest="may_send", action="store_false", help="refuse all its submissions"
    )
    p.add_argument("--clear-flag", action="store_true", help="lower the 'sending limited' flag now")
    _limit_options(p)
    help_ = "show or change the customer's sending limits (all its mailboxes together)"
    p = _subcommands(subparsers.choices["customer"]).add_parser(
        "sending", help=help_, description=help_
    )
    p.set_defaults(handler=customer_sending)
    p.add_argument("name")
    _limit_options(p)
