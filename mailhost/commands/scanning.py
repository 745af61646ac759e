"""``mailhost domain scan`` / ``mailhost customer scan``: the scanning policy (thresholds,
subject tag, greylisting), and ``mailhost domain scan-list``: the allow and block lists.

Hooked under the existing ``domain`` and ``customer`` groups by ``register``. Without options
a command shows the effective policy and which fields are the scope's own; with options it
changes them (validated, audited). ``default`` clears a field so it is inherited again.
"""

from __future__ import annotations

import argparse
from types import EllipsisType
from typing import Any

from app.errors import ValidationError
from app.scanning.decision import ScanPolicy
from app.services import customers, domains
from app.services import scan_policy as policies
from app.services.audit import CLI_ACTOR
from app.services.scan_policy import PolicyChange
from mailhost.commands.sending import _subcommands
from mailhost.context import Context

_INHERIT = ("default", "inherit")


def _score(text: str | None, field: str) -> float | None | EllipsisType:
    if text is None:
        return ...
    if text.strip().lower() in _INHERIT:
        return None
    try:
        return float(text)
    except ValueError:
        raise ValidationError(f"{field} must be a number or 'default'", field=field) from None


def _change(args: argparse.Namespace) -> PolicyChange:
    tag: str | None | EllipsisType = ...
    if args.subject_tag is not None:
        tag = None if args.subject_tag.strip().lower() in _INHERIT else args.subject_tag
    grey: bool | None | EllipsisType = ...
    if args.greylisting is not None:
        grey = {"on": True, "off": False, "default": None}[args.greylisting]
    return PolicyChange(
        reject_score=_score(args.reject_score, "reject_score"),
        tag_score=_score(args.tag_score, "tag_score"),
        subject_tag=tag,
        greylisting=grey,
    )


def _changed(change: PolicyChange) -> bool:
    return any(getattr(change, f) is not ... for f in policies._FIELDS)


def _row(name: str, effective: ScanPolicy, own: dict[str, object]) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name}
    for field in policies._FIELDS:
        row[field] = getattr(effective, field)
        row[f"{field}_own"] = "default" if own[field] is None else own[field]
    return row


def domain_scan(ctx: Context, args: argparse.Namespace) -> int:
    change = _change(args)
    defaults = policies.defaults_from(ctx.settings)
    with ctx.transaction() as s:
        d = domains.get_domain_by_name(s, name=args.name)
        if _changed(change):
            policies.set_override(s, actor=CLI_ACTOR, scope="domain", scope_id=d.id, change=change)
        effective = policies.domain_policy(s, domain_id=d.id, defaults=defaults)
        row = _row(d.name, effective, policies.own_override(s, scope="domain", scope_id=d.id))
    ctx.print_record(row, as_json=args.json)
    return 0


def customer_scan(ctx: Context, args: argparse.Namespace) -> int:
    change = _change(args)
    defaults = policies.defaults_from(ctx.settings)
    with ctx.transaction() as s:
        c = customers.get_customer_by_name(s, name=args.name)
        if _changed(change):
            policies.set_override(
                s, actor=CLI_ACTOR, scope="customer", scope_id=c.id, change=change
            )
        effective = policies.customer_policy(s, customer_id=c.id, defaults=defaults)
        row = _row(c.name, effective, policies.own_override(s, scope="customer", scope_id=c.id))
    ctx.print_record(row, as_json=args.json)
    return 0


def domain_scan_list(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        d = domains.get_domain_by_name(s, name=args.name)
        for value in args.add or ():
            policies.add_list_entry(
                s, actor=CLI_ACTOR, domain_id=d.id, list_name=args.list, value=value
            )
        for value in args.remove or ():
            policies.remove_list_entry(
                s, actor=CLI_ACTOR, domain_id=d.id, list_name=args.list, value=value
            )
        rows = [
            {"list": e.list_name, "kind": e.kind, "value": e.value}
            for e in policies.list_entries(s, domain_id=d.id, list_name=args.list)
        ]
    ctx.print_table(rows, ["list", "kind", "value"], as_json=args.json)
    return 0


def _policy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("name")
    p.add_argument("--reject-score", metavar="SCORE", help="refuse (550 5.7.1) at this score")
    p.add_argument("--tag-score", metavar="SCORE", help="tag (X-Spam-Status: Yes) at this score")
    p.add_argument("--subject-tag", metavar="TEXT", help="Subject prefix of tagged mail")
    p.add_argument("--greylisting", choices=("on", "off", "default"))
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")


def register(subparsers: Any) -> None:
    """Add ``scan`` under ``domain`` and ``customer``, ``scan-list`` under ``domain``."""
    domain_group = _subcommands(subparsers.choices["domain"])
    help_ = "show or change the domain's scanning policy ('default' inherits the customer's)"
    p: argparse.ArgumentParser = domain_group.add_parser("scan", help=help_, description=help_)
    p.set_defaults(handler=domain_scan)
    _policy_options(p)
    help_ = "show or change the domain's allow or block list (sender, sender domain, network)"
    p = domain_group.add_parser("scan-list", help=help_, description=help_)
    p.set_defaults(handler=domain_scan_list)
    p.add_argument("name")
    p.add_argument("list", choices=("allow", "block"))
    p.add_argument("--add", action="append", metavar="ENTRY")
    p.add_argument("--remove", action="append", metavar="ENTRY")
    p.add_argument("--json", action="store_true", help="machine-readable JSON output")
    help_ = "show or change the customer's scanning policy ('default' inherits the platform's)"
    p = _subcommands(subparsers.choices["customer"]).add_parser(
        "scan", help=help_, description=help_
    )
    p.set_defaults(handler=customer_scan)
    _policy_options(p)
