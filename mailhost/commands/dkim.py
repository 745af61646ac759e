"""``mailhost domain dkim generate|list|show|retire``: DKIM keys and the records to publish.

Hooked under the ``domain`` command by ``register`` (called after the domain command group
exists). A generate on a domain that has a signing key is a rotation: the old key stays
published until ``retire``. Private keys are never printed.
"""

from __future__ import annotations

import argparse
from typing import Any

from app.models import DkimKey
from app.services import dkim as dkim_service
from app.services import domains
from app.services.audit import CLI_ACTOR
from app.services.dkim import DnsPolicy, DnsRecord
from mailhost.commands.common import add_json_option, iso
from mailhost.context import Context


def _key_row(domain: str, k: DkimKey) -> dict[str, Any]:
    return {
        "domain": domain,
        "selector": k.selector,
        "algorithm": k.algorithm,
        "bits": k.key_bits,
        "state": k.state,
        "created_at": iso(k.created_at),
        "retired_at": iso(k.retired_at),
    }


def _record_row(r: DnsRecord) -> dict[str, Any]:
    return {
        "purpose": r.purpose,
        "type": r.type,
        "name": r.name,
        "value": r.value,
        "zone": f"{r.name} IN {r.type} {r.zone_text}",
        "note": r.note,
    }


def dkim_generate(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        d = domains.get_domain_by_name(s, name=args.domain)
        previous = dkim_service.active_key(s, domain_id=d.id)
        key = dkim_service.generate_key(
            s, actor=CLI_ACTOR, domain_id=d.id, selector=args.selector, algorithm=args.algorithm
        )
        row = _key_row(d.name, key)
        record = next(
            r
            for r in dkim_service.recommended_records(
                s, domain_id=d.id, policy=DnsPolicy.from_settings(ctx.settings)
            )
            if r.selector == key.selector
        )
        old = None if previous is None else previous.selector
    row["record_name"] = record.name
    row["record_value"] = record.value
    ctx.print_record(row, as_json=args.json)
    if old is not None:
        ctx.note(f"mailhost: {old} no longer signs; retire it once mail signed with it is read")
    ctx.note("mailhost: publish the record now: the new key signs from this moment")
    return 0


def dkim_list(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        d = domains.get_domain_by_name(s, name=args.domain)
        rows = [_key_row(d.name, k) for k in dkim_service.list_keys(s, domain_id=d.id)]
    cols = ["selector", "algorithm", "state", "created_at", "retired_at"]
    ctx.print_table(rows, cols, as_json=args.json)
    return 0


def dkim_show(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        d = domains.get_domain_by_name(s, name=args.domain)
        records = dkim_service.recommended_records(
            s, domain_id=d.id, policy=DnsPolicy.from_settings(ctx.settings)
        )
    if args.json:
        ctx.print_json([_record_row(r) for r in records])
        return 0
    # Zone-file lines: what a BIND-style zone takes as is (long TXT data already split).
    for r in records:
        ctx.print(f"; {r.note}")
        ctx.print(f"{r.name} IN {r.type} {r.zone_text}")
    return 0


def dkim_retire(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        d = domains.get_domain_by_name(s, name=args.domain)
        key = dkim_service.retire_key(s, actor=CLI_ACTOR, domain_id=d.id, selector=args.selector)
        name, selector = d.name, key.selector
        signing = dkim_service.active_key(s, domain_id=d.id) is not None
    ctx.print(f"DKIM key {selector} of {name} retired: remove its record from the zone")
    if not signing:
        ctx.note(f"mailhost: {name} has no signing key now; its mail is not DKIM-signed")
    return 0


def _subcommands(parser: argparse.ArgumentParser) -> Any:
    """The sub-command action of ``parser`` (argparse offers no public accessor)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise LookupError(f"{parser.prog} has no sub-commands")


def register(subparsers: Any) -> None:
    """Add ``dkim`` under the existing ``domain`` command of the top-level sub-parsers."""
    domain_parser = subparsers.choices["domain"]
    dkim_parser = _subcommands(domain_parser).add_parser(
        "dkim",
        help="DKIM signing keys and the DNS records to publish",
        description="DKIM signing keys (RFC 6376) of a domain and the DNS records to publish.",
    )
    g = dkim_parser.add_subparsers(dest="dkim_action", metavar="ACTION", required=True)

    def sub(name: str, handler: Any, help_: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = g.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        p.add_argument("domain")
        return p

    p = sub("generate", dkim_generate, "new signing key (rotates: the old one stays published)")
    p.add_argument("--selector", help="DNS label(s), default mh<yyyymmdd>")
    p.add_argument(
        "--algorithm",
        choices=["rsa", "ed25519"],
        default="rsa",
        help="rsa (rsa-sha256, 2048 bits; default) or ed25519 (ed25519-sha256, RFC 8463)",
    )
    add_json_option(p)
    p = sub("list", dkim_list, "list the domain's keys, retired ones too")
    add_json_option(p)
    p = sub("show", dkim_show, "the DNS records to publish (MX, SPF, DKIM, DMARC)")
    add_json_option(p)
    p = sub("retire", dkim_retire, "withdraw a key: its record goes, its private key is erased")
    p.add_argument("selector")
