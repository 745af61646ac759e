"""Provisioning sub-commands (customer, domain, mailbox, alias, operator, token) over services.

Each command runs in one transaction with the CLI actor (so it is audited like any other door),
prints only after the commit succeeded, and touches message files only after the commit (a
removed mailbox's Maildir goes once the row is gone, never before). A Maildir that cannot be
removed is a warning on stderr with its path, and the exit status stays 0: the removal itself
happened.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable, Iterator
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from app.errors import NotFoundError, ValidationError
from app.maildir import MailboxRef
from app.models import (
    STATUS_ACTIVE,
    STATUS_SUSPENDED,
    Alias,
    ApiToken,
    Customer,
    Domain,
    Mailbox,
    Operator,
)
from app.services import accounts, aliases, customers, domains, mailboxes, removal
from app.services.audit import CLI_ACTOR
from mailhost.context import Context, UsageError

Handler = Callable[[Context, argparse.Namespace], int]
T = TypeVar("T")

# Lists are read in pages of this size (keyset pagination in the services).
_PAGE = 500


# ---------------------------------------------------------------------------- helpers
def format_size(n: int | None) -> str | None:
    """Bytes as the shortest exact binary unit: 1073741824 -> '1G'."""
    if n is None:
        return None
    for unit, factor in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def _all_pages(fetch: Callable[[int | None, int], list[T]], limit: int | None) -> list[T]:
    """Follow keyset pagination (``after_id``) until ``limit`` rows or the end."""
    rows: list[T] = []
    after: int | None = None
    while limit is None or len(rows) < limit:
        page_size = _PAGE if limit is None else min(_PAGE, limit - len(rows))
        page = fetch(after, page_size)
        rows.extend(page)
        if len(page) < page_size:
            break
        after = page[-1].id  # type: ignore[attr-defined]
    return rows


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
        "currency": c.currency,
        "domains": len(c.domains),
        "created_at": _iso(c.created_at),
    }


def _domain_row(session: Session, d: Domain) -> dict[str, Any]:
    return {
        "id": d.id,
        "name": d.name,
        "customer": d.customer.name,
        "status": d.status,
        "mailboxes": mailboxes.count_mailboxes(session, domain_id=d.id),
        "max_mailboxes": d.max_mailboxes,
        "default_quota": format_size(d.default_quota_bytes),
        "total_quota": format_size(d.total_quota_bytes),
        "catchall": d.catchall_target,
        "domain_aliases": sorted(a.name for a in d.domain_aliases),
        "created_at": _iso(d.created_at),
    }


def _mailbox_row(m: Mailbox) -> dict[str, Any]:
    return {
        "id": m.id,
        "address": m.address,
        "status": m.status,
        "quota": format_size(m.quota_bytes),
        "quota_bytes": m.quota_bytes,
        "pop3": m.pop3_enabled,
        "created_at": _iso(m.created_at),
        "last_login_at": _iso(m.last_login_at),
    }


def _alias_row(a: Alias) -> dict[str, Any]:
    return {
        "id": a.id,
        "address": a.address,
        "targets": [t.address for t in a.targets],
        "created_at": _iso(a.created_at),
    }


def _operator_row(o: Operator) -> dict[str, Any]:
    return {
        "id": o.id,
        "username": o.username,
        "role": o.role,
        "active": o.active,
        "created_at": _iso(o.created_at),
        "last_login_at": _iso(o.last_login_at),
    }


def _token_row(t: ApiToken) -> dict[str, Any]:
    return {
        "id": t.id,
        "name": t.name,
        "prefix": t.prefix,
        "scopes": t.scope_list,
        "owner": t.owner,
        "created_at": _iso(t.created_at),
        "last_used_at": _iso(t.last_used_at),
        "revoked_at": _iso(t.revoked_at),
    }


def _find_token(session: Session, key: str) -> ApiToken:
    for token in accounts.list_tokens(session):
        if str(token.id) == key or token.prefix == key:
            return token
    raise NotFoundError(f"no token {key!r} (give its id or prefix)", field="token")


def _new_password(ctx: Context, args: argparse.Namespace) -> tuple[str, bool]:
    return ctx.read_password(
        from_stdin=args.password_stdin,
        generate=args.generate_password,
        generator=mailboxes.generate_password,
    )


def _remove_maildirs(ctx: Context, refs: list[MailboxRef]) -> None:
    """After the commit; files that stay are a warning (the rows are gone either way)."""
    for leftover in removal.remove_maildirs(store=ctx.store, refs=refs):
        ctx.note(f"mailhost: warning: {leftover.detail}")


# ---------------------------------------------------------------------------- customer
def customer_add(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        c = customers.create_customer(
            s,
            actor=CLI_ACTOR,
            name=args.name,
            price_per_mailbox=_price(args.price),
            currency=args.currency,
        )
        row = _customer_row(s, c)
    ctx.print_record(row, as_json=args.json)
    return 0


def customer_list(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        found = _all_pages(
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
    if args.new_name is None and args.price is None and args.currency is None:
        raise UsageError("nothing to change: give --name, --price or --currency")
    with ctx.transaction() as s:
        c = customers.get_customer_by_name(s, name=args.name)
        c = customers.update_customer(
            s,
            actor=CLI_ACTOR,
            customer_id=c.id,
            name=args.new_name,
            price_per_mailbox=None if args.price is None else _price(args.price),
            currency=args.currency,
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
    _remove_maildirs(ctx, refs)
    ctx.print(f"customer {name} removed")
    return 0


# ---------------------------------------------------------------------------- domain
def domain_add(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        c = customers.get_customer_by_name(s, name=args.customer)
        d = domains.create_domain(
            s,
            actor=CLI_ACTOR,
            customer_id=c.id,
            name=args.domain,
            max_mailboxes=args.max_mailboxes,
            default_quota_bytes=_size_or_none(args.default_quota),
            total_quota_bytes=_size_or_none(args.total_quota),
        )
        row = _domain_row(s, d)
    ctx.print_record(row, as_json=args.json)
    return 0


def _size_or_none(text: str | None) -> int | None:
    return None if text is None else mailboxes.parse_size(text)


def domain_list(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        customer_id = (
            None
            if args.customer is None
            else customers.get_customer_by_name(s, name=args.customer).id
        )
        found = _all_pages(
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
                default_quota_bytes=_size_or_none(args.default_quota),
                total_quota_bytes=_size_or_none(args.total_quota),
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
    _remove_maildirs(ctx, refs)
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


# ---------------------------------------------------------------------------- mailbox
def mailbox_add(ctx: Context, args: argparse.Namespace) -> int:
    password, generated = _new_password(ctx, args)
    with ctx.transaction() as s:
        m = mailboxes.create_mailbox(
            s,
            actor=CLI_ACTOR,
            address=args.address,
            password=password,
            quota_bytes=_size_or_none(args.quota),
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
        found = _all_pages(
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
            quota_bytes=_size_or_none(args.quota),
            pop3_enabled=args.pop3,
        )
        row = _mailbox_row(m)
    ctx.print_record(row, as_json=args.json)
    return 0


def mailbox_password(ctx: Context, args: argparse.Namespace) -> int:
    password, generated = _new_password(ctx, args)
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
    _remove_maildirs(ctx, refs)
    ctx.print(f"mailbox {address} removed")
    return 0


# ---------------------------------------------------------------------------- alias
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
        found = _all_pages(
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


# ---------------------------------------------------------------------------- operator
def operator_add(ctx: Context, args: argparse.Namespace) -> int:
    password, generated = _new_password(ctx, args)
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
    password, generated = _new_password(ctx, args)
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


# ---------------------------------------------------------------------------- token
def token_add(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        t, secret = accounts.create_token(
            s,
            actor=CLI_ACTOR,
            name=args.name,
            scopes=list(flatten_scopes(args.scope)),
            owner=args.owner,
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
    cols = ["id", "name", "prefix", "scopes", "owner", "last_used_at", "revoked_at"]
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


# ---------------------------------------------------------------------------- parser
class _RefusePassword(argparse.Action):
    """``--password VALUE`` is refused without echoing VALUE anywhere."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        raise UsageError(
            "passwords are never taken from the command line (they would show in ps and "
            "shell history): use the prompt, --password-stdin or --generate-password"
        )


def _password_options(p: argparse.ArgumentParser, *, generate: bool = True) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    if generate:
        group.add_argument(
            "--generate-password",
            action="store_true",
            help="generate a password and print it once",
        )
    else:
        p.set_defaults(generate_password=False)
    p.add_argument("--password", nargs="?", action=_RefusePassword, help=argparse.SUPPRESS)


def _json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")


def _list_options(p: argparse.ArgumentParser, *, status: bool = True) -> None:
    _json(p)
    p.add_argument("--search", help="substring to look for")
    if status:
        p.add_argument("--status", choices=[STATUS_ACTIVE, STATUS_SUSPENDED])
    p.add_argument("--limit", type=int, help="at most this many rows (default: all)")


def _sub(parent: Any, name: str, handler: Handler, help_: str, **kw: Any) -> Any:
    p = parent.add_parser(name, help=help_, description=help_, **kw)
    p.set_defaults(handler=handler)
    return p


def _group(subparsers: Any, name: str, help_: str) -> Any:
    p = subparsers.add_parser(name, help=help_, description=help_)
    return p.add_subparsers(dest="action", metavar="ACTION", required=True)


def register(subparsers: Any) -> None:
    """Add the provisioning command groups to the top-level sub-parsers."""
    # customer
    g = _group(subparsers, "customer", "customers: the organisations billed per mailbox")
    p = _sub(g, "add", customer_add, "add a customer")
    p.add_argument("name")
    p.add_argument("--price", default="0", help="price per mailbox and month, e.g. 2.50")
    p.add_argument("--currency", default="EUR", help="ISO 4217 code (default EUR)")
    _json(p)
    _list_options(_sub(g, "list", customer_list, "list customers"))
    p = _sub(g, "show", customer_show, "show one customer")
    p.add_argument("name")
    _json(p)
    p = _sub(g, "change", customer_change, "change name, price or currency", aliases=["set"])
    p.add_argument("name")
    p.add_argument("--name", dest="new_name", help="new name")
    p.add_argument("--price")
    p.add_argument("--currency")
    _json(p)
    for action, status in (("suspend", STATUS_SUSPENDED), ("resume", STATUS_ACTIVE)):
        _sub(g, action, _customer_status(status), f"{action} a customer").add_argument("name")
    p = _sub(g, "remove", customer_remove, "remove a customer")
    p.add_argument("name")
    p.add_argument(
        "--cascade", action="store_true", help="also remove its domains, mailboxes and mail"
    )

    # domain
    g = _group(subparsers, "domain", "hosted mail domains")
    p = _sub(g, "add", domain_add, "add a domain for a customer")
    p.add_argument("domain")
    p.add_argument("--customer", required=True, help="the customer's name")
    p.add_argument("--max-mailboxes", type=int)
    p.add_argument("--default-quota", help="quota of new mailboxes, e.g. 1G (default 1G)")
    p.add_argument("--total-quota", help="sum of all mailbox quotas, e.g. 50G")
    _json(p)
    p = _sub(g, "list", domain_list, "list domains")
    p.add_argument("--customer", help="only this customer's domains")
    _list_options(p)
    p = _sub(g, "show", domain_show, "show one domain")
    p.add_argument("domain")
    _json(p)
    p = _sub(g, "change", domain_change, "change limits or the catch-all", aliases=["set"])
    p.add_argument("domain")
    p.add_argument("--max-mailboxes", type=int)
    p.add_argument("--no-max-mailboxes", action="store_true", help="remove the limit")
    p.add_argument("--default-quota")
    p.add_argument("--total-quota")
    p.add_argument("--no-total-quota", action="store_true", help="remove the limit")
    p.add_argument("--catchall", metavar="ADDRESS", help="receive mail for unknown users")
    p.add_argument("--no-catchall", action="store_true")
    _json(p)
    for action, status in (("suspend", STATUS_SUSPENDED), ("resume", STATUS_ACTIVE)):
        _sub(g, action, _domain_status(status), f"{action} a domain").add_argument("domain")
    p = _sub(g, "remove", domain_remove, "remove a domain")
    p.add_argument("domain")
    p.add_argument("--cascade", action="store_true", help="also remove its mailboxes and mail")
    p = _sub(g, "alias-add", domain_alias_add, "add an alias domain (same users)")
    p.add_argument("domain")
    p.add_argument("alias", help="the alias domain name")
    p = _sub(g, "alias-remove", domain_alias_remove, "remove an alias domain")
    p.add_argument("alias")

    # mailbox
    g = _group(subparsers, "mailbox", "mailboxes")
    p = _sub(g, "add", mailbox_add, "add a mailbox (asks for the password)")
    p.add_argument("address")
    _password_options(p)
    p.add_argument("--quota", help="e.g. 500M or 2G (default: the domain's)")
    p.add_argument("--no-pop3", action="store_true", help="create with POP3 access disabled")
    _json(p)
    p = _sub(g, "list", mailbox_list, "list mailboxes")
    p.add_argument("--domain")
    p.add_argument("--customer")
    _list_options(p)
    p = _sub(g, "show", mailbox_show, "show one mailbox with its usage")
    p.add_argument("address")
    _json(p)
    p = _sub(g, "change", mailbox_change, "change quota or POP3 access", aliases=["set"])
    p.add_argument("address")
    p.add_argument("--quota")
    p.add_argument("--pop3", dest="pop3", action="store_true", default=None)
    p.add_argument("--no-pop3", dest="pop3", action="store_false")
    _json(p)
    p = _sub(g, "password", mailbox_password, "set a new password")
    p.add_argument("address")
    _password_options(p)
    for action, status in (("suspend", STATUS_SUSPENDED), ("resume", STATUS_ACTIVE)):
        _sub(g, action, _mailbox_status(status), f"{action} a mailbox").add_argument("address")
    p = _sub(g, "remove", mailbox_remove, "remove a mailbox and its messages")
    p.add_argument("address")

    # alias
    g = _group(subparsers, "alias", "aliases: one address to one or more addresses")
    p = _sub(g, "add", alias_add, "add an alias")
    p.add_argument("address")
    p.add_argument("targets", nargs="+", metavar="TARGET")
    _json(p)
    p = _sub(g, "list", alias_list, "list aliases")
    p.add_argument("--domain")
    _list_options(p, status=False)
    p = _sub(g, "show", alias_show, "show one alias")
    p.add_argument("address")
    _json(p)
    p = _sub(g, "change", alias_change, "replace the targets", aliases=["set"])
    p.add_argument("address")
    p.add_argument("targets", nargs="+", metavar="TARGET")
    _json(p)
    p = _sub(g, "remove", alias_remove, "remove an alias")
    p.add_argument("address")

    # operator
    g = _group(subparsers, "operator", "portal operators")
    p = _sub(g, "add", operator_add, "add an operator (asks for the password)")
    p.add_argument("username")
    p.add_argument("--role", choices=["admin", "support"], default="admin")
    _password_options(p)
    _json(p)
    _json(_sub(g, "list", operator_list, "list operators"))
    p = _sub(g, "show", operator_show, "show one operator")
    p.add_argument("username")
    _json(p)
    p = _sub(g, "password", operator_password, "set a new password")
    p.add_argument("username")
    _password_options(p)
    p = _sub(g, "remove", operator_remove, "remove an operator")
    p.add_argument("username")

    # token
    g = _group(subparsers, "token", "API tokens")
    p = _sub(g, "add", token_add, "create a token (printed once)")
    p.add_argument("name")
    p.add_argument(
        "--scope",
        action="append",
        required=True,
        nargs="+",
        help="provisioning, read, billing:read, queue (repeatable)",
    )
    p.add_argument("--owner", help="who the token is for")
    _json(p)
    p = _sub(g, "list", token_list, "list tokens")
    p.add_argument("--all", action="store_true", help="include revoked tokens")
    _json(p)
    p = _sub(g, "show", token_show, "show one token (by id or prefix)")
    p.add_argument("token")
    _json(p)
    p = _sub(g, "remove", token_remove, "revoke a token", aliases=["revoke"])
    p.add_argument("token")


def flatten_scopes(values: list[list[str]]) -> Iterator[str]:
    for group in values:
        yield from group
