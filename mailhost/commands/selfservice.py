"""``mailhost mailbox forward`` and ``mailhost mailbox autoreply``: what the user can set at
/me, set or cleared by an operator (someone left, or is ill).

Hooked under the existing ``mailbox`` group by ``register``. Without options the command
shows the current setting; with options it changes it (validated, audited) and shows it.
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from app.errors import ValidationError
from app.services import mailboxes, selfservice
from app.services.audit import CLI_ACTOR
from mailhost.commands.sending import _subcommands
from mailhost.context import Context


def _forward_row(address: str, view: selfservice.ForwardView | None) -> dict[str, Any]:
    if view is None:
        return {"address": address, "forward_to": None, "keep_copy": None, "hosted": None}
    return {
        "address": address,
        "forward_to": view.address,
        "keep_copy": view.keep_copy,
        "hosted": view.hosted,
    }


def mailbox_forward(ctx: Context, args: argparse.Namespace) -> int:
    if args.clear and args.to:
        raise ValidationError("give --to or --clear, not both", field="to")
    with ctx.transaction() as s:
        m = mailboxes.get_mailbox_by_address(s, address=args.address)
        if args.clear:
            selfservice.clear_forward(s, actor=CLI_ACTOR, mailbox_id=m.id)
        elif args.to:
            selfservice.set_forward(
                s, actor=CLI_ACTOR, mailbox_id=m.id, address=args.to, keep_copy=args.keep_copy
            )
        row = _forward_row(m.address, selfservice.get_forward(s, mailbox_id=m.id))
    ctx.print_record(row, as_json=args.json)
    return 0


def _date(text: str | None, field: str) -> dt.date | None:
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            f"--{field.replace('_', '-')} takes YYYY-MM-DD", field=field
        ) from None


def _reply_row(address: str, view: selfservice.AutoReplyView | None) -> dict[str, Any]:
    if view is None:
        return {"address": address, "auto_reply": "none"}
    return {
        "address": address,
        "auto_reply": "on" if view.enabled else "off",
        "starts_on": view.starts_on.isoformat() if view.starts_on else None,
        "ends_on": view.ends_on.isoformat() if view.ends_on else None,
        "subject": view.subject,
        "body": view.body,
    }


def mailbox_autoreply(ctx: Context, args: argparse.Namespace) -> int:
    changing = args.subject is not None or args.body is not None or args.body_stdin
    if args.clear and changing:
        raise ValidationError("give --clear alone", field="clear")
    body = args.body
    if args.body_stdin:
        body = ctx.stdin.read()
    with ctx.transaction() as s:
        m = mailboxes.get_mailbox_by_address(s, address=args.address)
        if args.clear:
            selfservice.clear_auto_reply(s, actor=CLI_ACTOR, mailbox_id=m.id)
        elif changing:
            selfservice.set_auto_reply(
                s,
                actor=CLI_ACTOR,
                mailbox_id=m.id,
                subject=args.subject or "",
                body=body or "",
                starts_on=_date(args.starts, "starts"),
                ends_on=_date(args.until, "until"),
                enabled=not args.disabled,
            )
        row = _reply_row(m.address, selfservice.get_auto_reply(s, mailbox_id=m.id))
    ctx.print_record(row, as_json=args.json)
    return 0


def register(subparsers: Any) -> None:
    """Add ``forward`` and ``autoreply`` under the existing ``mailbox`` command."""
    group = _subcommands(subparsers.choices["mailbox"])
    help_ = "show, set or clear where the mailbox's mail is forwarded"
    p: argparse.ArgumentParser = group.add_parser("forward", help=help_, description=help_)
    p.set_defaults(handler=mailbox_forward)
    p.add_argument("address")
    p.add_argument("--to", metavar="ADDRESS", help="forward to this hosted or remote address")
    p.add_argument(
        "--no-copy", dest="keep_copy", action="store_false", help="keep no copy in the mailbox"
    )
    p.add_argument("--clear", action="store_true", help="stop forwarding")
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")
    help_ = "show, set or clear the mailbox's auto-reply (vacation, RFC 3834)"
    p = group.add_parser("autoreply", help=help_, description=help_)
    p.set_defaults(handler=mailbox_autoreply)
    p.add_argument("address")
    p.add_argument("--subject")
    p.add_argument("--body", help="the text (or --body-stdin)")
    p.add_argument("--body-stdin", action="store_true", help="read the text from stdin")
    p.add_argument("--starts", metavar="YYYY-MM-DD", help="first day (UTC); default: now")
    p.add_argument("--until", metavar="YYYY-MM-DD", help="last day (UTC); default: open end")
    p.add_argument("--disabled", action="store_true", help="keep it, but do not send it")
    p.add_argument("--clear", action="store_true", help="remove the auto-reply")
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")
