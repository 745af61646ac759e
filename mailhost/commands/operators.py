"""``mailhost operator add|list|show|password|remove``: the people who use the portal."""

from __future__ import annotations

import argparse
from typing import Any

from app.models import Operator
from app.services import accounts
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


def _operator_row(o: Operator) -> dict[str, Any]:
    return {
        "id": o.id,
        "username": o.username,
        "role": o.role,
        "active": o.active,
        "created_at": iso(o.created_at),
        "last_login_at": iso(o.last_login_at),
    }


def operator_add(ctx: Context, args: argparse.Namespace) -> int:
    password, generated = new_password(ctx, args)
    with ctx.transaction() as s:
        o = accounts.create_operator(
            s, actor=CLI_ACTOR, username=args.username, password=password, role=args.role
        )
        row = _operator_row(o)
    if generated:
        row["password"] = password
    ctx.print_record(row, as_json=args.json)
    return 0


def operator_list(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        rows = [_operator_row(o) for o in accounts.list_operators(s)]
    ctx.print_table(rows, ["id", "username", "role", "active", "last_login_at"], as_json=args.json)
    return 0


def operator_show(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        row = _operator_row(accounts.get_operator_by_username(s, username=args.username))
    ctx.print_record(row, as_json=args.json)
    return 0


def operator_password(ctx: Context, args: argparse.Namespace) -> int:
    password, generated = new_password(ctx, args)
    with ctx.transaction() as s:
        o = accounts.get_operator_by_username(s, username=args.username)
        accounts.set_operator_password(s, actor=CLI_ACTOR, operator_id=o.id, password=password)
        username = o.username
    ctx.print(f"password of operator {username} changed")
    if generated:
        ctx.print(f"password: {password}")
    return 0


def operator_remove(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        o = accounts.get_operator_by_username(s, username=args.username)
        username = o.username
        accounts.delete_operator(s, actor=CLI_ACTOR, operator_id=o.id)
    ctx.print(f"operator {username} removed")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``operator`` group to the top-level sub-parsers."""
    g = add_group(subparsers, "operator", "portal operators")
    p = add_command(g, "add", operator_add, "add an operator (asks for the password)")
    p.add_argument("username")
    p.add_argument("--role", choices=["admin", "support"], default="admin")
    add_password_options(p)
    add_json_option(p)
    add_json_option(add_command(g, "list", operator_list, "list operators"))
    p = add_command(g, "show", operator_show, "show one operator")
    p.add_argument("username")
    add_json_option(p)
    p = add_command(g, "password", operator_password, "set a new password")
    p.add_argument("username")
    add_password_options(p)
    p = add_command(g, "remove", operator_remove, "remove an operator")
    p.add_argument("username")
