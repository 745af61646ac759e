"""``mailhost token add|list|show|remove``: API tokens (the secret is printed once, at add)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from sqlalchemy.orm import Session

from app.errors import NotFoundError
from app.models import ApiToken
from app.services import accounts, customers
from app.services.audit import CLI_ACTOR
from mailhost.commands.common import add_command, add_group, add_json_option, iso
from mailhost.context import Context


def _token_row(t: ApiToken) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "prefix": t.prefix,
        "scopes": t.scope_list,
        "owner": t.owner,
        "customer": t.customer_id if t.customer_id is not None else "-",
        "created_at": iso(t.created_at),
        "last_used_at": iso(t.last_used_at),
        "revoked_at": iso(t.revoked_at),
    }


def _find_token(session: Session, key: str) -> ApiToken:
    for token in accounts.list_tokens(session):
        if str(token.id) == key or token.prefix == key:
            return token
    raise NotFoundError(f"no token {key!r} (give its id or prefix)", field="token")


def flatten_scopes(values: list[list[str]]) -> Iterator[str]:
    for group in values:
        yield from group


def token_add(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        customer_id = (
            customers.get_customer_by_name(s, name=args.customer).id if args.customer else None
        )
        t, secret = accounts.create_token(
            s,
            actor=CLI_ACTOR,
            name=args.name,
            scopes=list(flatten_scopes(args.scope)),
            owner=args.owner,
            customer_id=customer_id,
        )
        row = _token_row(t)
    row["token"] = secret
    ctx.print_record(row, as_json=args.json)
    if not args.json:
        ctx.note("mailhost: the token is shown only this once; store it now")
    return 0


def token_list(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        rows = [_token_row(t) for t in accounts.list_tokens(s)]
    if not args.all:
        rows = [r for r in rows if r["revoked_at"] is None]
    cols = ["id", "name", "prefix", "scopes", "owner", "customer", "last_used_at", "revoked_at"]
    ctx.print_table(rows, cols, as_json=args.json)
    return 0


def token_show(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        row = _token_row(_find_token(s, args.token))
    ctx.print_record(row, as_json=args.json)
    return 0


def token_remove(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        t = accounts.revoke_token(s, actor=CLI_ACTOR, token_id=_find_token(s, args.token).id)
        text = f"token {t.prefix} ({t.name}) revoked"
    ctx.print(text)
    return 0


def register(subparsers: Any) -> None:
    """Add the ``token`` group to the top-level sub-parsers."""
    g = add_group(subparsers, "token", "API tokens")
    p = add_command(g, "add", token_add, "create a token (printed once)")
    p.add_argument("name")
    p.add_argument(
        "--scope",
        action="append",
        required=True,
        nargs="+",
        help="provisioning, read, billing:read, queue (repeatable)",
    )
    p.add_argument("--owner", help="who the token is for")
    p.add_argument(
        "--customer",
        help="bind the token to this customer (name): it sees only that customer's objects "
        "and is refused the ISP's routes; scopes provisioning, read, billing:read",
    )
    add_json_option(p)
    p = add_command(g, "list", token_list, "list tokens")
    p.add_argument("--all", action="store_true", help="include revoked tokens")
    add_json_option(p)
    p = add_command(g, "show", token_show, "show one token (by id or prefix)")
    p.add_argument("token")
    add_json_option(p)
    p = add_command(g, "remove", token_remove, "revoke a token", aliases=["revoke"])
    p.add_argument("token")
