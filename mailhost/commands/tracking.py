"""``mailhost trace ADDRESS`` (message tracking) and ``mailhost tracking prune``."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from app.models import MessageEvent
from app.services import tracking as tracking_service
from app.tracking import prune, retention_cutoff
from mailhost.commands.common import add_json_option, iso
from mailhost.context import Context, UsageError

COLUMNS = ["time", "queue_id", "kind", "where", "client", "sender", "recipient", "mailbox",
           "reply", "detail"]  # fmt: skip


def _record(e: MessageEvent) -> dict[str, Any]:
    where = e.service + (f" {e.stage}" if e.stage else "")
    return {
        "time": iso(e.occurred_at),
        "queue_id": e.queue_id,
        "kind": e.kind,
        "where": where + (f" -> {e.remote_host}" if e.remote_host else ""),
        "client": e.client_ip,
        "helo": e.helo,
        "sender": None if e.sender is None else (e.sender or "<>"),
        "recipient": e.recipient,
        "mailbox": e.mailbox,
        "remote_host": e.remote_host,
        "reply": e.reply,
        "detail": e.detail,
    }


def _time(text: str | None, option: str) -> dt.datetime | None:
    if text is None:
        return None
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option}: give a time such as 2026-12-03T14:00 (UTC)") from None


def trace(ctx: Context, args: argparse.Namespace) -> int:
    query = tracking_service.normalise_query(
        address=args.address,
        queue_id=args.queue_id,
        client_ip=args.client_ip,
        since=_time(args.since, "--since"),
        until=_time(args.until, "--until"),
    )
    if query.empty:
        raise UsageError("give an ADDRESS, --queue-id, --client-ip, --since or --until")
    rows: list[dict[str, Any]] = []
    cursor: str | None = None
    with ctx.transaction() as s:
        while len(rows) < args.limit:
            page, cursor = tracking_service.search_page(
                s, query=query, cursor=cursor, limit=min(500, args.limit - len(rows))
            )
            rows.extend(_record(e) for e in page)
            if cursor is None:
                break
    if not rows and not args.json:
        ctx.note("no message events match")
        return 0
    ctx.print_table(rows, COLUMNS, as_json=args.json)
    return 0


def tracking_prune(ctx: Context, args: argparse.Namespace) -> int:
    days = args.older_than_days
    if days is not None and days < 0:
        raise UsageError("--older-than-days must be 0 or more")
    cutoff = (
        retention_cutoff(ctx.settings)
        if days is None
        else dt.datetime.now(dt.UTC) - dt.timedelta(days=days)
    )
    removed = prune(ctx.session_factory, older_than=cutoff, batch_size=args.batch_size)
    ctx.print(f"removed {removed} message event(s) older than {iso(cutoff)}")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def register(subparsers: Any) -> None:
    """Add ``trace`` and the ``tracking`` group to the top-level sub-parsers."""
    p = subparsers.add_parser(
        "trace",
        help="what happened to the mail of an address (message tracking)",
        description="Every event of the messages from or to ADDRESS (an alias or a mailbox, "
        "any case), oldest first: accepted, refused (with the reply), stored, queued, each "
        "delivery attempt, delivered, bounced, retrieved and deleted by POP3.",
    )
    p.add_argument("address", nargs="?", help="sender or recipient address")
    p.add_argument("--queue-id", help="one message by its queue id")
    p.add_argument("--client-ip", help="events of connections from this IP address")
    p.add_argument("--since", help="at or after this time (ISO 8601, UTC unless a zone is given)")
    p.add_argument("--until", help="at or before this time")
    p.add_argument("--limit", type=_positive, default=1000, help="at most this many events")
    add_json_option(p)
    p.set_defaults(handler=trace)

    g = subparsers.add_parser(
        "tracking", help="message tracking upkeep", description="message tracking upkeep"
    )
    g = g.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = g.add_parser(
        "prune",
        help="delete events past the retention",
        description="Delete message events older than MAILHOST_TRACKING_RETENTION_DAYS (or "
        "--older-than-days), in batches with a commit after each, so nothing is locked long. "
        "serve and the web service also do this every MAILHOST_TRACKING_PRUNE_INTERVAL_SECONDS.",
    )
    p.add_argument("--older-than-days", type=float, help="override the retention")
    p.add_argument("--batch-size", type=_positive, default=5000, help="events per transaction")
    p.set_defaults(handler=tracking_prune)
