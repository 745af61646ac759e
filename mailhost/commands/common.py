"""What every command module shares: row formatting, pagination, options, passwords, removals."""

from __future__ import annotations

import argparse
import datetime as dt
from collections.abc import Callable
from typing import Any, TypeVar

from app.maildir import MailboxRef
from app.models import STATUS_ACTIVE, STATUS_SUSPENDED
from app.services import mailboxes, removal
from mailhost.context import PROG, Context, UsageError

Handler = Callable[[Context, argparse.Namespace], int]
T = TypeVar("T")

# Lists are read in pages of this size (keyset pagination in the services).
PAGE = 500


# ---------------------------------------------------------------------------- values
def iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="seconds")


def format_size(n: int | None) -> str | None:
    """Bytes as the shortest exact binary unit: 1073741824 -> '1G'."""
    if n is None:
        return None
    for unit, factor in (("T", 1024**4), ("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= factor and n % factor == 0:
            return f"{n // factor}{unit}"
    return str(n)


def size_or_none(text: str | None) -> int | None:
    return None if text is None else mailboxes.parse_size(text)


def all_pages(fetch: Callable[[int | None, int], list[T]], limit: int | None) -> list[T]:
    """Follow keyset pagination (``after_id``) until ``limit`` rows or the end."""
    rows: list[T] = []
    after: int | None = None
    while limit is None or len(rows) < limit:
        page_size = PAGE if limit is None else min(PAGE, limit - len(rows))
        page = fetch(after, page_size)
        rows.extend(page)
        if len(page) < page_size:
            break
        after = page[-1].id  # type: ignore[attr-defined]
    return rows


# ---------------------------------------------------------------------------- side effects
def new_password(ctx: Context, args: argparse.Namespace) -> tuple[str, bool]:
    return ctx.read_password(
        from_stdin=args.password_stdin,
        generate=args.generate_password,
        generator=mailboxes.generate_password,
    )


def remove_maildirs(ctx: Context, refs: list[MailboxRef]) -> None:
    """After the commit; files that stay are a warning (the rows are gone either way)."""
    for leftover in removal.remove_maildirs(store=ctx.store, refs=refs):
        ctx.note(f"{PROG}: warning: {leftover.detail}")


# ---------------------------------------------------------------------------- parser
class _RefusePassword(argparse.Action):
    """``--password VALUE`` is refused without echoing VALUE anywhere."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        raise UsageError(
            "passwords are never taken from the command line (they would show in ps and "
            "shell history): use the prompt, --password-stdin or --generate-password"
        )


def add_password_options(p: argparse.ArgumentParser, *, generate: bool = True) -> None:
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


def add_json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")


def add_list_options(p: argparse.ArgumentParser, *, status: bool = True) -> None:
    add_json_option(p)
    p.add_argument("--search", help="substring to look for")
    if status:
        p.add_argument("--status", choices=[STATUS_ACTIVE, STATUS_SUSPENDED])
    p.add_argument("--limit", type=int, help="at most this many rows (default: all)")


def add_command(parent: Any, name: str, handler: Handler, help_: str, **kw: Any) -> Any:
    """A sub-command ``name`` of ``parent`` (a sub-parsers action) that runs ``handler``."""
    p = parent.add_parser(name, help=help_, description=help_, **kw)
    p.set_defaults(handler=handler)
    return p


def add_group(subparsers: Any, name: str, help_: str) -> Any:
    """A command group ``name`` (``mailhost NAME ACTION``); returns its sub-parsers action."""
    p = subparsers.add_parser(name, help=help_, description=help_)
    return p.add_subparsers(dest="action", metavar="ACTION", required=True)
