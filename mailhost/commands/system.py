"""``mailhost serve|smtp|pop3|web|db upgrade|cert``: running the platform and setting it up."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from app.logsetup import start_logging
from mailhost.commands.common import Handler
from mailhost.context import PROG, Context, UsageError


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
    ctx.close()
    # Stale tmp/ files are removed by run_services at every (worker) start, not here.
    return run(ctx.settings, SERVE_KINDS)


def _cmd_edge(kind: str) -> Handler:
    def handler(ctx: Context, args: argparse.Namespace) -> int:
        from mailhost.serve import run_prefork

        _setup_logging(ctx)
        workers = args.workers or int(getattr(ctx.settings, f"{kind}_workers"))
        if workers < 1:
            raise UsageError("--workers must be at least 1")
        if kind == "smtp":
            _warn_without_postmaster(ctx)
        ctx.close()
        return run_prefork(ctx.settings, kind, workers)

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


def register(subparsers: Any) -> None:
    """Add ``serve``, ``smtp``, ``pop3``, ``web``, ``db`` and ``cert`` to the sub-parsers."""
    p = subparsers.add_parser(
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
        p = subparsers.add_parser(kind, help=f"run {what} alone", description=f"Run {what} alone.")
        p.add_argument(
            "--workers",
            type=int,
            metavar="N",
            help=f"worker processes sharing the port (default MAILHOST_{kind.upper()}_WORKERS)",
        )
        p.set_defaults(handler=_cmd_edge(kind))

    db = subparsers.add_parser("db", help="database schema").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    p = db.add_parser("upgrade", help="apply all migrations", description="Apply all migrations.")
    p.add_argument(
        "--create-first-operator",
        action="store_true",
        help="also create the 'admin' operator if there is none, printing its password once",
    )
    p.set_defaults(handler=cmd_db_upgrade)

    p = subparsers.add_parser(
        "cert",
        help="write a self-signed development certificate",
        description="Write a self-signed certificate and key and print the settings to use.",
    )
    p.add_argument("--dir", default="./var/tls", help="where to write (default ./var/tls)")
    p.add_argument("--hostname", help="name in the certificate (default MAILHOST_HOSTNAME)")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.set_defaults(handler=cmd_cert)
