"""``mailhost customer add|list|show|change|suspend|resume|remove``: the organisations billed."""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy.orm import Session

from app.errors import ValidationError
from app.models import STATUS_ACTIVE, STATUS_SUSPENDED, Customer
from app.services import customers, mailboxes, removal
from app.services.audit import CLI_ACTOR
from mailhost.commands.common import (
    Handler,
    add_command,
    add_group,
    add_json_option,
    add_list_options,
    all_pages,
    iso,
    remove_maildirs,
)
from mailhost.context import Context, UsageError


def _price(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValidationError(f"invalid price {text!r}", field="price") from None
    if not value.is_finite():
        raise ValidationError(f"invalid price {text!r}", field="price")
    return value


def _money(value: Decimal) -> str:
    """At least two decimals (2.50), more only when the price has them (0.125)."""
    normal = value.normalize()
    exponent = normal.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        return str(normal)
    return f"{value:.2f}"


def _customer_row(session: Session, c: Customer) -> dict[str, Any]:
    return {
        "id": c.id,
        "name": c.name,
        "status": c.status,
        "price_per_mailbox": _money(c.price_per_mailbox),
        "price_per_relay_domain": _money(c.price_per_relay_domain),
        "currency": c.currency,
        "domains": len(c.domains),
        "created_at": iso(c.created_at),
    }


def customer_add(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        c = customers.create_customer(
            s,
            actor=CLI_ACTOR,
            name=args.name,
            price_per_mailbox=_price(args.price),
            currency=args.currency,
            price_per_relay_domain=_price(args.relay_price),
        )
        row = _customer_row(s, c)
    ctx.print_record(row, as_json=args.json)
    return 0


def customer_list(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        found = all_pages(
            lambda after, n: customers.list_customers(
                s, search=args.search, status=args.status, after_id=after, limit=n
            ),
            args.limit,
        )
        rows = [_customer_row(s, c) for c in found]
    cols = ["id", "name", "status", "price_per_mailbox", "currency", "domains"]
    ctx.print_table(rows, cols, as_json=args.json)
    return 0


def customer_show(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        c = customers.get_customer_by_name(s, name=args.name)
        row = _customer_row(s, c)
        row["domains"] = sorted(d.name for d in c.domains)
        row["mailboxes"] = sum(mailboxes.count_mailboxes(s, domain_id=d.id) for d in c.domains)
    ctx.print_record(row, as_json=args.json)
    return 0


def customer_change(ctx: Context, args: argparse.Namespace) -> int:
    if all(v is None for v in (args.new_name, args.price, args.currency, args.relay_price)):
        raise UsageError("nothing to change: give --name, --price, --relay-price or --currency")
    with ctx.transaction() as s:
        c = customers.get_customer_by_name(s, name=args.name)
        c = customers.update_customer(
            s,
            actor=CLI_ACTOR,
            customer_id=c.id,
            name=args.new_name,
            price_per_mailbox=None if args.price is None else _price(args.price),
            currency=args.currency,
            price_per_relay_domain=None if args.relay_price is None else _price(args.relay_price),
        )
        row = _customer_row(s, c)
    ctx.print_record(row, as_json=args.json)
    return 0


def _customer_status(status: str) -> Handler:
    def handler(ctx: Context, args: argparse.Namespace) -> int:
        with ctx.transaction() as s:
            c = customers.get_customer_by_name(s, name=args.name)
            customers.set_customer_status(s, actor=CLI_ACTOR, customer_id=c.id, status=status)
            name = c.name
        ctx.print(f"customer {name} {status}")
        return 0

    return handler


def customer_remove(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        c = customers.get_customer_by_name(s, name=args.name)
        refs = removal.refs_of_customer(s, customer_id=c.id) if args.cascade else []
        name = c.name
        customers.delete_customer(s, actor=CLI_ACTOR, customer_id=c.id, cascade=args.cascade)
    remove_maildirs(ctx, refs)
    ctx.print(f"customer {name} removed")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``customer`` group to the top-level sub-parsers."""
    g = add_group(subparsers, "customer", "customers: the organisations billed per mailbox")
    p = add_command(g, "add", customer_add, "add a customer")
    p.add_argument("name")
    p.add_argument("--price", default="0", help="price per mailbox and month, e.g. 2.50")
    p.add_argument("--currency", default="EUR", help="ISO 4217 code (default EUR)")
    p.add_argument("--relay-price", default="0", help="price per relay domain and month")
    add_json_option(p)
    add_list_options(add_command(g, "list", customer_list, "list customers"))
    p = add_command(g, "show", customer_show, "show one customer")
    p.add_argument("name")
    add_json_option(p)
    p = add_command(g, "change", customer_change, "change name, price or currency", aliases=["set"])
    p.add_argument("name")
    p.add_argument("--name", dest="new_name", help="new name")
    p.add_argument("--price")
    p.add_argument("--relay-price")
    p.add_argument("--currency")
    add_json_option(p)
    for action, status in (("suspend", STATUS_SUSPENDED), ("resume", STATUS_ACTIVE)):
        add_command(g, action, _customer_status(status), f"{action} a customer").add_argument(
            "name"
        )
    p = add_command(g, "remove", customer_remove, "remove a customer")
    p.add_argument("name")
    p.add_argument(
        "--cascade", action="store_true", help="also remove its domains, mailboxes and mail"
    )
