"""``mailhost relay list|show|set|convert|remove|flush|hold|release`` and
``mailhost relay recipients add|remove|list|import|export``; ``mailhost domain add --relay``."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.errors import ValidationError
from app.models import RELAY_MODES, RELAY_TLS_POLICIES, Domain, utcnow
from app.services import customers, relay, relay_recipients
from app.services.audit import CLI_ACTOR
from app.services.relay_hop import hop_checker
from app.spool import SpoolStore
from mailhost.commands.common import add_command, add_group, add_json_option, iso
from mailhost.context import Context, UsageError

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, *, field: str) -> int:
    """``864000``, ``10d``, ``12h``, ``30m``, ``45s`` -> seconds."""
    found = _DURATION.match(text)
    if found is None:
        raise ValidationError(
            f"{field}: {text!r} is not a duration like 10d, 12h or 3600", field=field
        )
    return int(found.group(1)) * _UNITS[found.group(2).lower()]


def _record(session: Session, domain: Domain) -> dict[str, Any]:
    settings = relay.get_relay(session, domain_id=domain.id)
    summary = relay.queue_summary(session, domain_id=domain.id)
    return {
        "id": domain.id,
        "name": domain.name,
        "customer": domain.customer.name,
        "status": domain.status,
        "next_hop": settings.next_hop,
        "tls_policy": settings.tls_policy,
        "recipient_mode": settings.recipient_mode,
        "recipients_listed": relay_recipients.count_recipients(session, domain_id=domain.id),
        "callout_cache_seconds": settings.callout_cache_seconds,
        "max_queue_age_seconds": settings.max_queue_age,
        "flush_networks": settings.flush_network_list,
        "held": settings.held,
        "hold_reason": settings.hold_reason,
        "queued": summary.count,
        "queued_held": summary.held,
        "oldest_queued_at": iso(summary.oldest),
        "last_error": summary.last_error,
        "created_at": iso(domain.created_at),
    }


def _domain(session: Session, name: str) -> Domain:
    return relay.get_relay_by_name(session, name=name).domain


def _settings_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if args.tls is not None:
        kw["tls_policy"] = args.tls
    if args.recipients is not None:
        kw["recipient_mode"] = args.recipients
    if args.max_queue_age is not None:
        kw["max_queue_age"] = parse_duration(args.max_queue_age, field="max_queue_age")
    if args.callout_cache is not None:
        kw["callout_cache_seconds"] = parse_duration(
            args.callout_cache, field="callout_cache_seconds"
        )
    if args.flush_network:
        kw["flush_networks"] = args.flush_network
    return kw


def domain_add_relay(ctx: Context, args: argparse.Namespace) -> int:
    """``mailhost domain add NAME --customer C --relay --next-hop HOP [...]``."""
    if not args.next_hop:
        raise UsageError("--relay needs --next-hop HOST[:PORT] or --next-hop mx:HOSTNAME")
    if any(v is not None for v in (args.max_mailboxes, args.default_quota, args.total_quota)):
        raise UsageError("a relay domain has no mailboxes: mailbox limits do not apply")
    check = hop_checker(ctx.settings)
    with ctx.transaction() as s:
        customer = customers.get_customer_by_name(s, name=args.customer)
        domain = relay.create_relay_domain(
            s,
            actor=CLI_ACTOR,
            customer_id=customer.id,
            name=args.domain,
            next_hop=args.next_hop,
            hop_check=check,
            **_settings_kwargs(args),
        )
        row = _record(s, domain)
    ctx.print_record(row, as_json=args.json)
    return 0


def relay_list(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        customer_id = (
            None
            if args.customer is None
            else customers.get_customer_by_name(s, name=args.customer).id
        )
        rows = [
            _record(s, d)
            for d in relay.list_relay_domains(s, customer_id=customer_id, limit=100_000)
        ]
    cols = ["id", "name", "customer", "next_hop", "recipient_mode", "held", "queued", "last_error"]
    ctx.print_table(rows, cols, as_json=args.json)
    return 0


def relay_show(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        row = _record(s, _domain(s, args.domain))
    ctx.print_record(row, as_json=args.json)
    return 0


def relay_set(ctx: Context, args: argparse.Namespace) -> int:
    kw = _settings_kwargs(args)
    if args.no_flush_networks:
        if args.flush_network:
            raise UsageError("--flush-network and --no-flush-networks contradict each other")
        kw["flush_networks"] = []
    if args.next_hop is not None:
        kw["next_hop"] = args.next_hop
    if not kw:
        raise UsageError("nothing to change: see 'mailhost relay set --help'")
    check = hop_checker(ctx.settings) if "next_hop" in kw else None
    with ctx.transaction() as s:
        domain = _domain(s, args.domain)
        relay.update_relay(s, actor=CLI_ACTOR, domain_id=domain.id, hop_check=check, **kw)
        row = _record(s, domain)
    ctx.print_record(row, as_json=args.json)
    return 0


def relay_convert(ctx: Context, args: argparse.Namespace) -> int:
    check = hop_checker(ctx.settings)
    with ctx.transaction() as s:
        from app.services import domains

        hosted = domains.get_domain_by_name(s, name=args.domain)
        domain = relay.convert_to_relay(
            s,
            actor=CLI_ACTOR,
            domain_id=hosted.id,
            next_hop=args.next_hop,
            hop_check=check,
            **_settings_kwargs(args),
        )
        row = _record(s, domain)
    ctx.print_record(row, as_json=args.json)
    return 0


def relay_remove(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        domain = _domain(s, args.domain)
        name = domain.name
        spool_ids = relay.delete_relay_domain(
            s, actor=CLI_ACTOR, domain_id=domain.id, discard=args.discard_queued
        )
    spool = SpoolStore(ctx.settings.spool_root)
    for spool_id in spool_ids:  # after the commit; the orphan cleaner catches any left
        spool.remove(spool_id)
    ctx.print(
        f"relay domain {name} removed"
        + (f", {len(spool_ids)} queued message(s) discarded" if spool_ids else "")
    )
    return 0


def relay_flush(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        domain = _domain(s, args.domain)
        count = relay.flush(s, actor=CLI_ACTOR, domain_id=domain.id, now=utcnow())
    ctx.print(f"{count} queued recipient(s) of {domain.name} due now")
    return 0


def relay_hold(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        domain = _domain(s, args.domain)
        count = relay.hold(s, actor=CLI_ACTOR, domain_id=domain.id, reason=args.reason)
        name = domain.name
    ctx.print(f"relay domain {name} held ({count} queued recipient(s) held)")
    return 0


def relay_release(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        domain = _domain(s, args.domain)
        count = relay.release(s, actor=CLI_ACTOR, domain_id=domain.id, now=utcnow())
        name = domain.name
    ctx.print(f"relay domain {name} released ({count} queued recipient(s) due now)")
    return 0


# --- recipients -----------------------------------------------------------------------------
def recipients_add(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        domain = _domain(s, args.domain)
        added = [
            relay_recipients.add_recipient(
                s, actor=CLI_ACTOR, domain_id=domain.id, address=a
            ).local_part
            for a in args.address
        ]
        name = domain.name
    for local in added:
        ctx.print(f"recipient {local}@{name} added")
    return 0


def recipients_remove(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        domain = _domain(s, args.domain)
        for address in args.address:
            relay_recipients.remove_recipient(
                s, actor=CLI_ACTOR, domain_id=domain.id, address=address
            )
        name = domain.name
    ctx.print(f"{len(args.address)} recipient(s) of {name} removed")
    return 0


def recipients_list(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        domain = _domain(s, args.domain)
        rows = [
            {"address": f"{r.local_part}@{domain.name}", "created_at": iso(r.created_at)}
            for r in relay_recipients.list_recipients(
                s, domain_id=domain.id, search=args.search, limit=1_000_000
            )
        ]
    ctx.print_table(rows, ["address", "created_at"], as_json=args.json)
    return 0


def recipients_import(ctx: Context, args: argparse.Namespace) -> int:
    try:
        text = ctx.stdin.read() if args.file == "-" else Path(args.file).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"cannot read {args.file}: {exc}", field="file") from exc
    with ctx.transaction() as s:
        domain = _domain(s, args.domain)
        summary = relay_recipients.import_recipients(
            s, actor=CLI_ACTOR, domain_id=domain.id, text=text, replace=args.replace
        )
    ctx.print(
        f"{summary.added} added, {summary.already_listed} already listed, {summary.removed} removed"
    )
    return 0


def recipients_export(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        text = relay_recipients.export_recipients_csv(s, domain_id=_domain(s, args.domain).id)
    if args.file in (None, "-"):
        ctx.stdout.write(text)
        ctx.stdout.flush()
    else:
        Path(args.file).write_text(text, "utf-8", newline="")
    return 0


# --- parser ---------------------------------------------------------------------------------
def add_settings_options(p: argparse.ArgumentParser, *, next_hop: bool = True) -> None:
    if next_hop:
        p.add_argument(
            "--next-hop", help="where the mail goes: HOST, HOST:PORT, [ADDRESS]:PORT or mx:HOSTNAME"
        )
    p.add_argument(
        "--tls", choices=RELAY_TLS_POLICIES, help="TLS to the next hop (default opportunistic)"
    )
    p.add_argument("--recipients", choices=RELAY_MODES, help="recipient check (default list)")
    p.add_argument("--max-queue-age", metavar="DURATION", help="e.g. 10d (the default), 36h")
    p.add_argument("--callout-cache", metavar="DURATION", help="verify mode: cache time (1h)")
    p.add_argument(
        "--flush-network",
        action="append",
        metavar="CIDR",
        help="a client network allowed to ETRN (repeatable)",
    )


def add_domain_add_options(p: argparse.ArgumentParser) -> None:
    """The ``--relay`` options of ``mailhost domain add`` (mailhost/commands/domains.py)."""
    p.add_argument(
        "--relay",
        action="store_true",
        help="a relay domain (SMTP mail connection): all mail goes to --next-hop",
    )
    add_settings_options(p)


def register(subparsers: Any) -> None:
    g = add_group(
        subparsers, "relay", "relay domains (SMTP mail connection to the customer's server)"
    )
    p = add_command(g, "list", relay_list, "list relay domains with their queues")
    p.add_argument("--customer")
    add_json_option(p)
    p = add_command(g, "show", relay_show, "show a relay domain, its settings and queue")
    p.add_argument("domain")
    add_json_option(p)
    p = add_command(g, "set", relay_set, "change a relay domain's settings", aliases=["change"])
    p.add_argument("domain")
    add_settings_options(p)
    p.add_argument("--no-flush-networks", action="store_true", help="nobody may ETRN")
    add_json_option(p)
    p = add_command(
        g, "convert", relay_convert, "turn a hosted domain (no mailboxes) into a relay domain"
    )
    p.add_argument("domain")
    add_settings_options(p, next_hop=False)
    p.add_argument("--next-hop", required=True)
    add_json_option(p)
    p = add_command(g, "remove", relay_remove, "remove a relay domain")
    p.add_argument("domain")
    p.add_argument(
        "--discard-queued",
        action="store_true",
        help="also delete its queued mail, without a bounce (audited)",
    )
    add_command(g, "flush", relay_flush, "deliver the domain's queued mail now").add_argument(
        "domain"
    )
    p = add_command(g, "hold", relay_hold, "stop delivering to the domain (mail is kept)")
    p.add_argument("domain")
    p.add_argument("--reason", help="a note shown with the domain")
    add_command(g, "release", relay_release, "deliver again after hold").add_argument("domain")

    r = add_group(g, "recipients", "the listed recipients of a relay domain (mode list)")
    p = add_command(r, "add", recipients_add, "list recipients (local parts or addresses)")
    p.add_argument("domain")
    p.add_argument("address", nargs="+")
    p = add_command(r, "remove", recipients_remove, "remove listed recipients")
    p.add_argument("domain")
    p.add_argument("address", nargs="+")
    p = add_command(r, "list", recipients_list, "list the recipients")
    p.add_argument("domain")
    p.add_argument("--search")
    add_json_option(p)
    p = add_command(
        r, "import", recipients_import, "add the addresses of a CSV file (all or nothing)"
    )
    p.add_argument("domain")
    p.add_argument("file", help="CSV file, first column the address; - for standard input")
    p.add_argument("--replace", action="store_true", help="also remove those the file omits")
    p = add_command(r, "export", recipients_export, "write the recipients as CSV")
    p.add_argument("domain")
    p.add_argument("file", nargs="?", help="default: standard output")
