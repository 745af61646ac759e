"""The ``mailhost`` command: argument parsing, settings at the entry point, one-line errors."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn, TextIO

import pydantic
from sqlalchemy import exc as sa_exc

from app.config import Settings
from app.errors import MailhostError, TemporaryError
from app.logsetup import start_logging
from app.maildir import MaildirError
from mailhost import commands, dkim_commands, queue_commands
from mailhost.context import Context, UsageError

PROG = "mailhost"
EXIT_ERROR = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are the same one line as every other error of the command."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


# ---------------------------------------------------------------------------- server commands
def _setup_logging(ctx: Context) -> None:
    start_logging(ctx.settings.log_level, stream=ctx.stderr)
    # Alembic announces each of its plugins at INFO; the migrations it runs stay visible.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def _warn_without_postmaster(ctx: Context) -> None:
    # RFC 5321 section 4.5.1: mail to <Postmaster> (and to postmaster@ of a domain with no
    # mailbox) needs the platform postmaster mailbox; without it such mail is refused.
    if ctx.settings.postmaster_address is None:
        logging.getLogger("mailhost").warning(
            "MAILHOST_POSTMASTER_ADDRESS is not set: mail to <Postmaster> and to postmaster@ "
            "of a domain without mailboxes is refused (RFC 5321 section 4.5.1 wants it delivered)"
        )


def _upgrade(ctx: Context) -> None:
    from app.migrations import upgrade_to_head

    upgrade_to_head(ctx.settings.database_url)


def _ensure_first_operator(ctx: Context) -> None:
    from app.services import accounts

    with ctx.transaction() as s:
        created = accounts.ensure_first_operator(s)
        username = None if created is None else created[0].username
    if created is not None:
        # Printed once, on stdout, when the operator is created; never logged or stored.
        ctx.print(
            f"{PROG}: created the first portal operator {username!r} with password: {created[1]}"
        )
        ctx.print(f"{PROG}: this password is shown only once; change it in the portal")


def cmd_serve(ctx: Context, args: argparse.Namespace) -> int:
    from mailhost.serve import SERVE_KINDS, run

    _setup_logging(ctx)
    _warn_without_postmaster(ctx)
    _upgrade(ctx)
    _ensure_first_operator(ctx)
    removed = ctx.store.clean_tmp()
    if removed:
        logging.getLogger("mailhost").warning("removed %d stale file(s) from tmp/", removed)
    ctx.close()
    return run(ctx.settings, SERVE_KINDS)


def _cmd_edge(kind: str) -> commands.Handler:
    def handler(ctx: Context, args: argparse.Namespace) -> int:
        from mailhost.serve import run_prefork

        _setup_logging(ctx)
        workers = args.workers or int(getattr(ctx.settings, f"{kind}_workers"))
        if workers < 1:
            raise UsageError("--workers must be at least 1")
        settings = ctx.settings
        if kind == "smtp":
            _warn_without_postmaster(ctx)
            # Crash debris is cleaned where mail is written; never delivered (see MaildirStore).
            ctx.store.clean_tmp()
        if kind == "submission":
            ctx.store.clean_tmp()
        ctx.close()
        return run_prefork(settings, kind, workers)

    return handler


def cmd_db_upgrade(ctx: Context, args: argparse.Namespace) -> int:
    _upgrade(ctx)
    ctx.print("database schema is up to date")
    if args.create_first_operator:
        _ensure_first_operator(ctx)
    return 0


def cmd_cert(ctx: Context, args: argparse.Namespace) -> int:
    from app.tls import generate_self_signed

    directory = Path(args.dir).resolve()
    cert, key = directory / "cert.pem", directory / "key.pem"
    if (cert.exists() or key.exists()) and not args.force:
        raise UsageError(f"{cert} or {key} exists already: use --force to replace them")
    hostname = args.hostname or ctx.settings.hostname
    generate_self_signed(cert, key, hostname=hostname)
    ctx.note(f"{PROG}: wrote a self-signed certificate for {hostname} (development only)")
    ctx.print(f"MAILHOST_TLS_CERT_FILE={cert}")
    ctx.print(f"MAILHOST_TLS_KEY_FILE={key}")
    return 0


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

    p = sub.add_parser(
        "serve",
        help="migrate, then run SMTP, POP3, the portal, submission and delivery in one process",
        description="Apply migrations, create a first operator if there is none, and run "
        "SMTP ingress, POP3, the portal, SMTP submission and a delivery worker together "
        "until SIGINT/SIGTERM.",
    )
    p.set_defaults(handler=cmd_serve)
    for kind, what in (
        ("smtp", "SMTP ingress"),
        ("pop3", "the POP3 server"),
        ("web", "the portal"),
        ("submission", "SMTP submission for hosted users (STARTTLS and implicit-TLS ports)"),
    ):
        p = sub.add_parser(kind, help=f"run {what} alone", description=f"Run {what} alone.")
        p.add_argument(
            "--workers",
            type=int,
            metavar="N",
            help=f"worker processes sharing the port (default MAILHOST_{kind.upper()}_WORKERS)",
        )
        p.set_defaults(handler=_cmd_edge(kind))

    db = sub.add_parser("db", help="database schema").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = db.add_parser("upgrade", help="apply all migrations", description="Apply all migrations.")
    p.add_argument(
        "--create-first-operator",
        action="store_true",
        help="also create the 'admin' operator if there is none, printing its password once",
    )
    p.set_defaults(handler=cmd_db_upgrade)

    p = sub.add_parser(
        "cert",
        help="write a self-signed development certificate",
        description="Write a self-signed certificate and key and print the settings to use.",
    )
    p.add_argument("--dir", default="./var/tls", help="where to write (default ./var/tls)")
    p.add_argument("--hostname", help="name in the certificate (default MAILHOST_HOSTNAME)")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.set_defaults(handler=cmd_cert)

    commands.register(sub)
    dkim_commands.register(sub)  # under "domain": after the domain group exists
    queue_commands.register(sub)
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
