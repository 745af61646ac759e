"""``mailhost customer-admin add|list|password|remove`` (a customer's own administrators) and
``mailhost operator totp reset`` / ``mailhost customer-admin totp-reset`` (two-factor login)."""

from __future__ import annotations

import argparse
from typing import Any

from app.models import CustomerAdmin
from app.services import accounts, customer_admins, customers, totp
from app.services.audit import CLI_ACTOR
from mailhost.commands.common import (
    add_command,
    add_group,
    add_json_option,
    add_password_options,
    iso,
    new_password,
)
from mailhost.context import Context


def _row(a: CustomerAdmin) -> dict[str, Any]:
    return {
        "id": a.id,
        "username": a.username,
        "customer": a.customer.name,
        "customer_id": a.customer_id,
        "active": a.active,
        "created_at": iso(a.created_at),
        "last_login_at": iso(a.last_login_at),
    }


def admin_add(ctx: Context, args: argparse.Namespace) -> int:
    password, generated = new_password(ctx, args)
    with ctx.transaction() as s:
        customer = customers.get_customer_by_name(s, name=args.customer)
        a = customer_admins.create_customer_admin(
            s, actor=CLI_ACTOR, customer_id=customer.id, username=args.username, password=password
        )
        row = _row(a)
    if generated:
        row["password"] = password
    ctx.print_record(row, as_json=args.json)
    return 0


def admin_list(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        customer_id = (
            customers.get_customer_by_name(s, name=args.customer).id if args.customer else None
        )
        rows = [
            _row(a)
            for a in customer_admins.list_customer_admins(s, actor=None, customer_id=customer_id)
        ]
    ctx.print_table(
        rows, ["id", "username", "customer", "active", "last_login_at"], as_json=args.json
    )
    return 0


def admin_password(ctx: Context, args: argparse.Namespace) -> int:
    password, generated = new_password(ctx, args)
    with ctx.transaction() as s:
        a = customer_admins.get_customer_admin_by_username(s, username=args.username)
        customer_admins.set_customer_admin_password(
            s, actor=CLI_ACTOR, admin_id=a.id, password=password
        )
        username = a.username
    ctx.print(f"password of customer administrator {username} changed")
    if generated:
        ctx.print(f"password: {password}")
    return 0


def admin_remove(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        a = customer_admins.get_customer_admin_by_username(s, username=args.username)
        username = a.username
        customer_admins.delete_customer_admin(s, actor=CLI_ACTOR, admin_id=a.id)
    ctx.print(f"customer administrator {username} removed")
    return 0


def admin_totp_reset(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        a = customer_admins.get_customer_admin_by_username(s, username=args.username)
        done = totp.reset(s, actor=CLI_ACTOR, owner=totp.Owner("customer_admin", a.id, a.username))
        username = a.username
    ctx.print(
        f"two-factor login of {username} turned off"
        if done
        else f"{username} had no two-factor login"
    )
    return 0


def operator_totp_reset(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        o = accounts.get_operator_by_username(s, username=args.username)
        done = totp.reset(s, actor=CLI_ACTOR, owner=totp.Owner("operator", o.id, o.username))
        username = o.username
    ctx.print(
        f"two-factor login of {username} turned off"
        if done
        else f"{username} had no two-factor login"
    )
    return 0


def _subcommands(parser: argparse.ArgumentParser) -> Any:
    for action in parser._actions:  # noqa: SLF001 - argparse has no public accessor
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            return action
    raise LookupError(parser.prog)


def register(subparsers: Any) -> None:
    """Add the ``customer-admin`` group, and ``totp reset`` under the ``operator`` group."""
    g = add_group(subparsers, "customer-admin", "a customer's own portal administrators")
    p = add_command(g, "add", admin_add, "add an administrator of a customer")
    p.add_argument("customer", help="the customer's name")
    p.add_argument("username")
    add_password_options(p)
    add_json_option(p)
    p = add_command(g, "list", admin_list, "list customer administrators")
    p.add_argument("--customer", help="only this customer's")
    add_json_option(p)
    p = add_command(g, "password", admin_password, "set a new password")
    p.add_argument("username")
    add_password_options(p)
    p = add_command(g, "remove", admin_remove, "remove a customer administrator")
    p.add_argument("username")
    p = add_command(g, "totp-reset", admin_totp_reset, "turn two-factor login off (lost phone)")
    p.add_argument("username")

    operator = subparsers.choices["operator"]
    totp_parser = _subcommands(operator).add_parser(
        "totp", help="two-factor login", description="two-factor login (TOTP) of an operator"
    )
    tg = totp_parser.add_subparsers(dest="totp_action", metavar="ACTION", required=True)
    p = add_command(tg, "reset", operator_totp_reset, "turn two-factor login off (lost phone)")
    p.add_argument("username")
