"""``mailhost alias add|list|show|change|remove``: one address to one or more addresses."""

from __future__ import annotations

import argparse
from typing import Any

from app.models import Alias
from app.services import aliases, domains
from app.services.audit import CLI_ACTOR
from mailhost.commands.common import (
    add_command,
    add_group,
    add_json_option,
    add_list_options,
    all_pages,
    iso,
)
from mailhost.context import Context


def _alias_row(a: Alias) -> dict[str, Any]:
    return {
        "id": a.id,
        "address": a.address,
        "targets": [t.address for t in a.targets],
        "created_at": iso(a.created_at),
    }


def alias_add(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        a = aliases.create_alias(s, actor=CLI_ACTOR, address=args.address, targets=args.targets)
        row = _alias_row(a)
    ctx.print_record(row, as_json=args.json)
    return 0


def alias_list(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        domain_id = (
            None if args.domain is None else domains.get_domain_by_name(s, name=args.domain).id
        )
        found = all_pages(
            lambda after, n: aliases.list_aliases(
                s, domain_id=domain_id, search=args.search, after_id=after, limit=n
            ),
            args.limit,
        )
        rows = [_alias_row(a) for a in found]
    ctx.print_table(rows, ["id", "address", "targets"], as_json=args.json)
    return 0


def alias_show(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        row = _alias_row(aliases.get_alias_by_address(s, address=args.address))
    ctx.print_record(row, as_json=args.json)
    return 0


def alias_change(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        a = aliases.get_alias_by_address(s, address=args.address)
        a = aliases.set_alias_targets(s, actor=CLI_ACTOR, alias_id=a.id, targets=args.targets)
        row = _alias_row(a)
    ctx.print_record(row, as_json=args.json)
    return 0


def alias_remove(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        a = aliases.get_alias_by_address(s, address=args.address)
        address = a.address
        aliases.delete_alias(s, actor=CLI_ACTOR, alias_id=a.id)
    ctx.print(f"alias {address} removed")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``alias`` group to the top-level sub-parsers."""
    g = add_group(subparsers, "alias", "aliases: one address to one or more addresses")
    p = add_command(g, "add", alias_add, "add an alias")
    p.add_argument("address")
    p.add_argument("targets", nargs="+", metavar="TARGET")
    add_json_option(p)
    p = add_command(g, "list", alias_list, "list aliases")
    p.add_argument("--domain")
    add_list_options(p, status=False)
    p = add_command(g, "show", alias_show, "show one alias")
    p.add_argument("address")
    add_json_option(p)
    p = add_command(g, "change", alias_change, "replace the targets", aliases=["set"])
    p.add_argument("address")
    p.add_argument("targets", nargs="+", metavar="TARGET")
    add_json_option(p)
    p = add_command(g, "remove", alias_remove, "remove an alias")
    p.add_argument("address")
