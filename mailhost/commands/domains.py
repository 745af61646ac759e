"""``mailhost domain add|list|show|change|suspend|resume|remove|alias-add|alias-remove``."""

from __future__ import annotations

import argparse
from typing import Any

from sqlalchemy.orm import Session

from app.models import STATUS_ACTIVE, STATUS_SUSPENDED, Domain
from app.services import customers, domains, mailboxes, removal
from app.services.audit import CLI_ACTOR
from mailhost.commands import relay as relay_commands
from mailhost.commands.common import (
    Handler,
    add_command,
    add_group,
    add_json_option,
    add_list_options,
    all_pages,
    format_size,
    iso,
    remove_maildirs,
    size_or_none,
)
from mailhost.context import Context, UsageError


def _domain_row(session: Session, d: Domain) -> dict[str, Any]:
    return {
        "id": d.id,
        "name": d.name,
        "kind": d.kind,
        "customer": d.customer.name,
        "status": d.status,
        "mailboxes": mailboxes.count_mailboxes(session, domain_id=d.id),
        "max_mailboxes": d.max_mailboxes,
        "default_quota": format_size(d.default_quota_bytes),
        "total_quota": format_size(d.total_quota_bytes),
        "catchall": d.catchall_target,
        "domain_aliases": sorted(a.name for a in d.domain_aliases),
        "created_at": iso(d.created_at),
    }


def domain_add(ctx: Context, args: argparse.Namespace) -> int:
    if args.relay:
        return relay_commands.domain_add_relay(ctx, args)
    if args.next_hop is not None:
        raise UsageError("--next-hop is for relay domains: add --relay")
    with ctx.transaction() as s:
        c = customers.get_customer_by_name(s, name=args.customer)
        d = domains.create_domain(
            s,
            actor=CLI_ACTOR,
            customer_id=c.id,
            name=args.domain,
            max_mailboxes=args.max_mailboxes,
            default_quota_bytes=size_or_none(args.default_quota),
            total_quota_bytes=size_or_none(args.total_quota),
        )
        row = _domain_row(s, d)
    ctx.print_record(row, as_json=args.json)
    return 0


def domain_list(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        customer_id = (
            None
            if args.customer is None
            else customers.get_customer_by_name(s, name=args.customer).id
        )
        found = all_pages(
            lambda after, n: domains.list_domains(
                s,
                customer_id=customer_id,
                search=args.search,
                status=args.status,
                after_id=after,
                limit=n,
            ),
            args.limit,
        )
        rows = [_domain_row(s, d) for d in found]
    cols = ["id", "name", "customer", "status", "mailboxes", "default_quota"]
    ctx.print_table(rows, cols, as_json=args.json)
    return 0


def domain_show(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        row = _domain_row(s, domains.get_domain_by_name(s, name=args.domain))
    ctx.print_record(row, as_json=args.json)
    return 0


def domain_change(ctx: Context, args: argparse.Namespace) -> int:
    limits = (args.max_mailboxes, args.default_quota, args.total_quota)
    clears = (args.no_max_mailboxes, args.no_total_quota)
    catchall_change = args.catchall is not None or args.no_catchall
    if all(v is None for v in limits) and not any(clears) and not catchall_change:
        raise UsageError("nothing to change: see 'mailhost domain change --help'")
    with ctx.transaction() as s:
        d = domains.get_domain_by_name(s, name=args.domain)
        if any(v is not None for v in limits) or any(clears):
            d = domains.update_domain(
                s,
                actor=CLI_ACTOR,
                domain_id=d.id,
                max_mailboxes=args.max_mailboxes,
                default_quota_bytes=size_or_none(args.default_quota),
                total_quota_bytes=size_or_none(args.total_quota),
                clear_max_mailboxes=args.no_max_mailboxes,
                clear_total_quota=args.no_total_quota,
            )
        if catchall_change:
            d = domains.set_catchall(
                s,
                actor=CLI_ACTOR,
                domain_id=d.id,
                target=None if args.no_catchall else args.catchall,
            )
        row = _domain_row(s, d)
    ctx.print_record(row, as_json=args.json)
    return 0


def _domain_status(status: str) -> Handler:
    def handler(ctx: Context, args: argparse.Namespace) -> int:
        with ctx.transaction() as s:
            d = domains.get_domain_by_name(s, name=args.domain)
            domains.set_domain_status(s, actor=CLI_ACTOR, domain_id=d.id, status=status)
            name = d.name
        ctx.print(f"domain {name} {status}")
        return 0

    return handler


def domain_remove(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        d = domains.get_domain_by_name(s, name=args.domain)
        refs = removal.refs_of_domain(s, domain_id=d.id) if args.cascade else []
        name = d.name
        domains.delete_domain(s, actor=CLI_ACTOR, domain_id=d.id, cascade=args.cascade)
    remove_maildirs(ctx, refs)
    ctx.print(f"domain {name} removed")
    return 0


def domain_alias_add(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        d = domains.get_domain_by_name(s, name=args.domain)
        alias = domains.add_domain_alias(s, actor=CLI_ACTOR, domain_id=d.id, alias_name=args.alias)
        text = f"domain alias {alias.name} -> {d.name} added"
    ctx.print(text)
    return 0


def domain_alias_remove(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        domains.remove_domain_alias(s, actor=CLI_ACTOR, alias_name=args.alias)
    ctx.print(f"domain alias {args.alias} removed")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``domain`` group to the top-level sub-parsers (``dkim`` hooks under it later)."""
    g = add_group(subparsers, "domain", "hosted mail domains")
    p = add_command(g, "add", domain_add, "add a domain for a customer")
    p.add_argument("domain")
    p.add_argument("--customer", required=True, help="the customer's name")
    p.add_argument("--max-mailboxes", type=int)
    p.add_argument("--default-quota", help="quota of new mailboxes, e.g. 1G (default 1G)")
    p.add_argument("--total-quota", help="sum of all mailbox quotas, e.g. 50G")
    relay_commands.add_domain_add_options(p)
    add_json_option(p)
    p = add_command(g, "list", domain_list, "list domains")
    p.add_argument("--customer", help="only this customer's domains")
    add_list_options(p)
    p = add_command(g, "show", domain_show, "show one domain")
    p.add_argument("domain")
    add_json_option(p)
    p = add_command(g, "change", domain_change, "change limits or the catch-all", aliases=["set"])
    p.add_argument("domain")
    p.add_argument("--max-mailboxes", type=int)
    p.add_argument("--no-max-mailboxes", action="store_true", help="remove the limit")
    p.add_argument("--default-quota")
    p.add_argument("--total-quota")
    p.add_argument("--no-total-quota", action="store_true", help="remove the limit")
    p.add_argument("--catchall", metavar="ADDRESS", help="receive mail for unknown users")
    p.add_argument("--no-catchall", action="store_true")
    add_json_option(p)
    for action, status in (("suspend", STATUS_SUSPENDED), ("resume", STATUS_ACTIVE)):
        add_command(g, action, _domain_status(status), f"{action} a domain").add_argument("domain")
    p = add_command(g, "remove", domain_remove, "remove a domain")
    p.add_argument("domain")
    p.add_argument("--cascade", action="store_true", help="also remove its mailboxes and mail")
    p = add_command(g, "alias-add", domain_alias_add, "add an alias domain (same users)")
    p.add_argument("domain")
    p.add_argument("alias", help="the alias domain name")
    p = add_command(g, "alias-remove", domain_alias_remove, "remove an alias domain")
    p.add_argument("alias")
