"""The ``mailhost`` command: argument parsing, settings at the entry point, one-line errors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NoReturn, TextIO

import pydantic
from sqlalchemy import exc as sa_exc

from app.config import Settings
from app.errors import MailhostError, TemporaryError
from app.maildir import MaildirError
from mailhost import commands
from mailhost.context import PROG, Context, UsageError

EXIT_ERROR = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are the same one line as every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Hosted mail for an ISP: SMTP ingress, POP3, operator portal and API.",
        epilog="Settings come from MAILHOST_* environment variables and ./.env.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    parser.add_argument(
        "--database-url", metavar="URL", help="override MAILHOST_DATABASE_URL for this command"
    )
    parser.add_argument(
        "--maildir-root", metavar="DIR", help="override MAILHOST_MAILDIR_ROOT for this command"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mailhost")
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------- errors
def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _database_message(error: sa_exc.DBAPIError) -> str:
    detail = _one_line(str(error.orig).strip().splitlines()[0] if str(error.orig) else str(error))
    lowered = detail.lower()
    if "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered):
        return "the database has no Mailhost schema yet: run 'mailhost db upgrade'"
    if isinstance(error, sa_exc.IntegrityError):
        return f"conflicting change, nothing was saved: {detail}"
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        return f"cannot use the database: {detail}"
    return f"database error: {detail}"


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if args.database_url is not None:
        overrides["database_url"] = args.database_url
    if args.maildir_root is not None:
        overrides["maildir_root"] = Path(args.maildir_root)
    return Settings(**overrides)


def main(
    argv: list[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one ``mailhost`` command; returns the exit status (0 ok, 1 error, 2 usage)."""
    err = stderr or sys.stderr

    def fail(message: str, status: int = EXIT_ERROR) -> int:
        err.write(f"{PROG}: error: {_one_line(message)}\n")
        err.flush()
        return status

    ctx: Context | None = None
    try:
        args = build_parser().parse_args(argv)
        ctx = Context(
            settings=_settings(args),
            stdin=stdin or sys.stdin,
            stdout=stdout or sys.stdout,
            stderr=err,
        )
        status: int = args.handler(ctx, args)
        return status
    except SystemExit as exc:  # argparse --help / usage errors already wrote their output
        return exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except UsageError as exc:
        return fail(str(exc), EXIT_USAGE)
    except TemporaryError as exc:
        return fail(f"{exc.message} (temporary; try again)")
    except MailhostError as exc:
        return fail(exc.message)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return fail(f"invalid setting MAILHOST_{where.upper()}: {first['msg']}")
    except sa_exc.DBAPIError as exc:
        return fail(_database_message(exc))
    except sa_exc.SQLAlchemyError as exc:
        return fail(f"database error: {exc}")
    except MaildirError as exc:
        return fail(f"Maildir: {exc}")
    except OSError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        err.write("\n")
        return 130
    finally:
        if ctx is not None:
            ctx.close()
