"""``mailhost mailbox add|list|show|change|password|suspend|resume|remove``: mailboxes."""

from __future__ import annotations

import argparse
from typing import Any

from app.maildir import MailboxRef
from app.models import STATUS_ACTIVE, STATUS_SUSPENDED, Mailbox
from app.services import customers, domains, mailboxes, removal
from app.services.audit import CLI_ACTOR
from mailhost.commands.common import (
    Handler,
    add_command,
    add_group,
    add_json_option,
    add_list_options,
    add_password_options,
    all_pages,
    format_size,
    iso,
    new_password,
    remove_maildirs,
    size_or_none,
)
from mailhost.context import Context, UsageError


def _mailbox_row(m: Mailbox) -> dict[str, Any]:
    return {
        "id": m.id,
        "address": m.address,
        "status": m.status,
        "quota": format_size(m.quota_bytes),
        "quota_bytes": m.quota_bytes,
        "pop3": m.pop3_enabled,
        "created_at": iso(m.created_at),
        "last_login_at": iso(m.last_login_at),
    }


def mailbox_add(ctx: Context, args: argparse.Namespace) -> int:
    password, generated = new_password(ctx, args)
    with ctx.transaction() as s:
        m = mailboxes.create_mailbox(
            s,
            actor=CLI_ACTOR,
            address=args.address,
            password=password,
            quota_bytes=size_or_none(args.quota),
            pop3_enabled=not args.no_pop3,
        )
        row = _mailbox_row(m)
        ref = MailboxRef.of(m)
        # Inside the transaction: if the Maildir cannot be made, the mailbox is not created.
        ctx.store.ensure(ref)
    if generated:
        row["password"] = password
    ctx.print_record(row, as_json=args.json)
    return 0


def mailbox_list(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        domain_id = (
            None if args.domain is None else domains.get_domain_by_name(s, name=args.domain).id
        )
        customer_id = (
            None
            if args.customer is None
            else customers.get_customer_by_name(s, name=args.customer).id
        )
        found = all_pages(
            lambda after, n: mailboxes.list_mailboxes(
                s,
                domain_id=domain_id,
                customer_id=customer_id,
                search=args.search,
                status=args.status,
                after_id=after,
                limit=n,
            ),
            args.limit,
        )
        rows = [_mailbox_row(m) for m in found]
    ctx.print_table(rows, ["id", "address", "status", "quota", "pop3"], as_json=args.json)
    return 0


def mailbox_show(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        m = mailboxes.get_mailbox_by_address(s, address=args.address)
        row = _mailbox_row(m)
        ref = MailboxRef.of(m)
    usage = ctx.store.usage(ref)
    row["used_bytes"] = usage.bytes
    row["messages"] = usage.messages
    ctx.print_record(row, as_json=args.json)
    return 0


def mailbox_change(ctx: Context, args: argparse.Namespace) -> int:
    if args.quota is None and args.pop3 is None:
        raise UsageError("nothing to change: give --quota, --pop3 or --no-pop3")
    with ctx.transaction() as s:
        m = mailboxes.get_mailbox_by_address(s, address=args.address)
        m = mailboxes.update_mailbox(
            s,
            actor=CLI_ACTOR,
            mailbox_id=m.id,
            quota_bytes=size_or_none(args.quota),
            pop3_enabled=args.pop3,
        )
        row = _mailbox_row(m)
    ctx.print_record(row, as_json=args.json)
    return 0


def mailbox_password(ctx: Context, args: argparse.Namespace) -> int:
    password, generated = new_password(ctx, args)
    with ctx.transaction() as s:
        m = mailboxes.get_mailbox_by_address(s, address=args.address)
        mailboxes.set_password(s, actor=CLI_ACTOR, mailbox_id=m.id, password=password)
        address = m.address
    ctx.print(f"password of {address} changed")
    if generated:
        ctx.print(f"password: {password}")
    return 0


def _mailbox_status(status: str) -> Handler:
    def handler(ctx: Context, args: argparse.Namespace) -> int:
        with ctx.transaction() as s:
            m = mailboxes.get_mailbox_by_address(s, address=args.address)
            mailboxes.set_mailbox_status(s, actor=CLI_ACTOR, mailbox_id=m.id, status=status)
            address = m.address
        ctx.print(f"mailbox {address} {status}")
        return 0

    return handler


def mailbox_remove(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        m = mailboxes.get_mailbox_by_address(s, address=args.address)
        refs, address = removal.refs_of_mailbox(s, mailbox_id=m.id), m.address
        mailboxes.delete_mailbox(s, actor=CLI_ACTOR, mailbox_id=m.id)
    # After the commit: had the commit failed, the messages would still be there.
    remove_maildirs(ctx, refs)
    ctx.print(f"mailbox {address} removed")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``mailbox`` group to the top-level sub-parsers."""
    g = add_group(subparsers, "mailbox", "mailboxes")
    p = add_command(g, "add", mailbox_add, "add a mailbox (asks for the password)")
    p.add_argument("address")
    add_password_options(p)
    p.add_argument("--quota", help="e.g. 500M or 2G (default: the domain's)")
    p.add_argument("--no-pop3", action="store_true", help="create with POP3 access disabled")
    add_json_option(p)
    p = add_command(g, "list", mailbox_list, "list mailboxes")
    p.add_argument("--domain")
    p.add_argument("--customer")
    add_list_options(p)
    p = add_command(g, "show", mailbox_show, "show one mailbox with its usage")
    p.add_argument("address")
    add_json_option(p)
    p = add_command(g, "change", mailbox_change, "change quota or POP3 access", aliases=["set"])
    p.add_argument("address")
    p.add_argument("--quota")
    p.add_argument("--pop3", dest="pop3", action="store_true", default=None)
    p.add_argument("--no-pop3", dest="pop3", action="store_false")
    add_json_option(p)
    p = add_command(g, "password", mailbox_password, "set a new password")
    p.add_argument("address")
    add_password_options(p)
    for action, status in (("suspend", STATUS_SUSPENDED), ("resume", STATUS_ACTIVE)):
        add_command(g, action, _mailbox_status(status), f"{action} a mailbox").add_argument(
            "address"
        )
    p = add_command(g, "remove", mailbox_remove, "remove a mailbox and its messages")
    p.add_argument("address")
