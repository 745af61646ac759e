"""``mailhost deliver`` and ``mailhost queue list|show|retry|hold|release|delete``."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from app import event_loop
from app.models import RCPT_STATES, OutboundMessage, utcnow
from app.services import queue_admin
from app.services.audit import CLI_ACTOR
from app.spool import SpoolStore
from mailhost.commands.common import add_json_option, iso
from mailhost.context import Context


def _message_record(message: OutboundMessage) -> dict[str, Any]:
    return {
        "queue_id": message.queue_id,
        "sender": message.sender or "<>",
        "size": message.size,
        "origin": message.origin,
        "customer_id": message.customer_id,
        "created_at": iso(message.created_at),
        "recipients": [
            {
                "address": r.address,
                "state": r.state,
                "attempts": r.attempts,
                "next_attempt_at": iso(r.next_attempt_at),
                "last_attempt_at": iso(r.last_attempt_at),
                "last_reply": None
                if r.last_reply_code is None
                else f"{r.last_reply_code} {r.last_reply_text}",
                "last_host": r.last_reply_host,
                "tls": r.last_tls,
                "leased_by": r.lease_owner,
            }
            for r in message.recipients
        ],
    }


def queue_list(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        summaries = queue_admin.list_queue(s, state=args.state, limit=args.limit)
        rows = [
            {
                "queue_id": q.message.queue_id,
                "created_at": iso(q.message.created_at),
                "size": q.message.size,
                "sender": q.message.sender or "<>",
                "origin": q.message.origin,
                "recipients": ", ".join(f"{n} {st}" for st, n in sorted(q.states.items())),
                "next_attempt_at": iso(q.next_attempt_at),
            }
            for q in summaries
        ]
    cols = ["queue_id", "created_at", "size", "sender", "origin", "recipients", "next_attempt_at"]
    ctx.print_table(rows, cols, as_json=args.json)
    return 0


def queue_show(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        record = _message_record(queue_admin.get_message(s, queue_id=args.queue_id))
    if args.json:
        ctx.print_json(record)
        return 0
    recipients = record.pop("recipients")
    ctx.print_record(record, as_json=False)
    for r in recipients:
        ctx.print()
        ctx.print_record(r, as_json=False)
    return 0


def _action(name: str) -> Any:
    def run(ctx: Context, args: argparse.Namespace) -> int:
        with ctx.transaction() as s:
            if name == "retry":
                m = queue_admin.retry_message(
                    s, actor=CLI_ACTOR, queue_id=args.queue_id, now=utcnow()
                )
            elif name == "hold":
                m = queue_admin.hold_message(s, actor=CLI_ACTOR, queue_id=args.queue_id)
            else:
                m = queue_admin.release_message(
                    s, actor=CLI_ACTOR, queue_id=args.queue_id, now=utcnow()
                )
            record = _message_record(m)
        if args.json:
            ctx.print_json(record)
        else:
            ctx.print(f"{record['queue_id']}: {name} done")
        return 0

    return run


def queue_delete(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.transaction() as s:
        spool_id = queue_admin.delete_message(s, actor=CLI_ACTOR, queue_id=args.queue_id)
    # After the commit; if this fails the orphan cleaner removes the file later.
    SpoolStore(ctx.settings.spool_root).remove(spool_id)
    ctx.print(f"{args.queue_id.upper()}: deleted")
    return 0


def deliver(ctx: Context, args: argparse.Namespace) -> int:
    """Run one delivery worker in the foreground (``--once``: one round, for cron or tests)."""
    from smtp_outbound.__main__ import serve
    from smtp_outbound.agent import DeliveryAgent

    if not args.once:
        event_loop.run(serve(ctx.settings), choice=ctx.settings.event_loop)
        return 0
    agent = DeliveryAgent(
        ctx.settings,
        ctx.session_factory,
        spool=SpoolStore(ctx.settings.spool_root),
        store=ctx.store,
    )
    handled = asyncio.run(agent.run_once())
    agent.tracking.stop()  # write the round's message events before the process ends
    ctx.note(f"{handled} queue row(s) handled")
    return 0


def register(subparsers: Any) -> None:
    """Add ``deliver`` and the ``queue`` group to the top-level sub-parsers."""
    p = subparsers.add_parser(
        "deliver",
        help="run the outbound delivery agent",
        description="Run one delivery worker until SIGINT/SIGTERM (several may run on several "
        "hosts against one PostgreSQL database).",
    )
    p.add_argument("--once", action="store_true", help="one round of due rows, then exit")
    p.set_defaults(handler=deliver)

    g = subparsers.add_parser("queue", help="the outbound queue", description="the outbound queue")
    g = g.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = g.add_parser("list", help="messages still to deliver (or in --state)")
    p.add_argument("--state", choices=RCPT_STATES)
    p.add_argument("--limit", type=int, default=1000)
    add_json_option(p)
    p.set_defaults(handler=queue_list)
    for name, help_, handler in (
        ("show", "one message and its recipients", queue_show),
        ("retry", "try queued and deferred recipients now", _action("retry")),
        ("hold", "stop delivery until released", _action("hold")),
        ("release", "release held recipients", _action("release")),
        ("delete", "delete a message without a bounce", queue_delete),
    ):
        p = g.add_parser(name, help=help_, description=help_)
        p.add_argument("queue_id")
        if name != "delete":
            add_json_option(p)
        p.set_defaults(handler=handler)
