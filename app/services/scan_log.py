"""What the scan decided, for operators: daily counts (DailyStat) and the latest rejections
per domain with their reason (pruned to ``KEEP_PER_DOMAIN``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.models import DailyStat, Domain, Mailbox, ScanRejection
from app.services import stats
from app.services.audit import SYSTEM_ACTOR, audit

KEEP_PER_DOMAIN = 100
# DailyStat metrics the ingress bumps, one per outcome the dashboard shows.
METRICS = {
    "rejected": "scan_rejected",
    "tagged": "scan_tagged",
    "clean": "scan_clean",
    "unscanned": "scan_unscanned",
    "deferred": "scan_deferred",
}


@dataclass(frozen=True, slots=True)
class RejectionRecord:
    """A refusal as the ingress saw it (the domain by name: resolved when written)."""

    domain: str
    queue_id: str
    client_ip: str
    sender: str
    recipient: str
    action: str
    score: float | None
    symbols: str
    reason: str
    occurred_at: dt.datetime


def write(
    session: Session, *, counts: Mapping[str, int], rejections: Iterable[RejectionRecord]
) -> None:
    """Add today's counts and store the rejections, then prune their domains' old rows."""
    for metric, count in counts.items():
        if count:
            stats.bump(session, metric=metric, by=count)
    touched: set[int] = set()
    for record in rejections:
        domain_id = session.scalar(select(Domain.id).where(Domain.name == record.domain))
        if domain_id is None:
            continue
        session.add(
            ScanRejection(
                domain_id=domain_id,
                occurred_at=record.occurred_at,
                queue_id=record.queue_id[:32],
                client_ip=record.client_ip[:64],
                sender=record.sender[:320],
                recipient=record.recipient[:320],
                action=record.action[:16],
                score=record.score,
                symbols=record.symbols[:300],
                reason=record.reason[:200],
            )
        )
        touched.add(domain_id)
    session.flush()
    for domain_id in touched:
        keep = (
            select(ScanRejection.id)
            .where(ScanRejection.domain_id == domain_id)
            .order_by(ScanRejection.id.desc())
            .limit(KEEP_PER_DOMAIN)
        )
        session.execute(
            delete(ScanRejection).where(
                ScanRejection.domain_id == domain_id,
                ScanRejection.id.not_in(keep.scalar_subquery()),
            )
        )


def recent(session: Session, *, domain_id: int, limit: int = 20) -> list[ScanRejection]:
    return list(
        session.scalars(
            select(ScanRejection)
            .where(ScanRejection.domain_id == domain_id)
            .order_by(ScanRejection.id.desc())
            .limit(limit)
        )
    )


def daily_counts(session: Session, *, days: int = 7) -> list[dict[str, object]]:
    """Per UTC day, newest first: rejected / tagged / clean / unscanned / deferred."""
    today = dt.datetime.now(dt.UTC).date()
    first = today - dt.timedelta(days=days - 1)
    rows = session.execute(
        select(DailyStat.day, DailyStat.metric, DailyStat.value).where(
            DailyStat.day >= first, DailyStat.metric.in_(list(METRICS.values()))
        )
    )
    by_day: dict[dt.date, dict[str, int]] = {}
    for day, metric, value in rows:
        by_day.setdefault(day, {})[metric] = int(value)
    out: list[dict[str, object]] = []
    for offset in range(days):
        day = today - dt.timedelta(days=offset)
        values = by_day.get(day, {})
        out.append({"day": day, **{name: values.get(m, 0) for name, m in METRICS.items()}})
    return out


# How long a mailbox caught sending spam stays flagged ("sending limited") unless an operator
# clears it first (`mailhost mailbox sending ADDRESS --clear-flag`, the portal, the API).
OUTBOUND_SPAM_FLAG = dt.timedelta(hours=24)


def flag_outbound_spam(session: Session, *, mailbox_id: int, reason: str, now: dt.datetime) -> None:
    """A submitted message was refused as spam or a virus: raise the mailbox's visible
    "sending limited" flag with the reason (the portal and `mailhost mailbox sending` show
    it) and audit it, so a compromised account is visible, not relayed. The flag itself does
    not refuse later submissions: every one is scanned and refused on its own."""
    mailbox = session.get(Mailbox, mailbox_id, with_for_update=True)
    if mailbox is None:
        return
    mailbox.sending_limited_since = now
    mailbox.sending_limited_until = now + OUTBOUND_SPAM_FLAG
    mailbox.sending_limited_reason = f"outbound spam: {reason}"[:300]
    audit(
        session,
        actor=SYSTEM_ACTOR,
        action="mailbox.outbound_spam",
        object_type="mailbox",
        object_id=mailbox.id,
        object_name=mailbox.address,
        detail=reason[:300],
    )
    session.flush()
