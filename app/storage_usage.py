"""The storage scan: Maildir usage summed per customer (the daily snapshot) and the mailboxes
near their quota, for the dashboard and the periodic jobs.

Summing ``MaildirStore.usage`` means one directory scan (or index read) per mailbox: about a
millisecond each, so minutes for 100,000 mailboxes. The portal therefore caches the result
(web/portal/usage.py) and the periodic jobs (app/periodic.py) run it once a UTC day to write
``customer_storage_daily``, off any event loop.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.maildir import MailboxRef, MaildirStore
from app.models import Domain, Mailbox
from app.services.charts import StorageFigure, record_storage_snapshot

log = logging.getLogger("mailhost.storage")
# The portal lists at most this many mailboxes near their quota (fullest first).
NEAR_QUOTA_LIMIT = 100


@dataclass(frozen=True, slots=True)
class NearQuota:
    mailbox_id: int
    address: str
    used: int
    quota: int

    @property
    def percent(self) -> float:
        return self.used * 100 / self.quota


@dataclass(frozen=True, slots=True)
class StorageTotals:
    bytes: int
    messages: int
    mailboxes: int
    computed_at: float  # time.time()
    per_customer: dict[int, StorageFigure] = field(default_factory=dict)
    near_quota: tuple[NearQuota, ...] = ()


def compute_totals(
    factory: sessionmaker[Session],
    store: MaildirStore,
    *,
    near_percent: int = 80,
    now: dt.datetime | None = None,
) -> StorageTotals:
    """Scan every mailbox once (the database is read in batches, not all at once); also the
    storage per customer (written as the snapshot of ``now``'s UTC day, the last scan of a
    day winning) and the mailboxes at ``near_percent`` of their quota or more."""
    total_bytes = total_messages = count = 0
    per_customer: dict[int, list[int]] = {}
    near: list[NearQuota] = []
    with factory() as session:
        rows = session.execute(
            select(
                Domain.name, Mailbox.local_part, Domain.customer_id, Mailbox.id, Mailbox.quota_bytes
            )
            .join(Domain, Mailbox.domain_id == Domain.id)
            .execution_options(yield_per=2000)
        )
        for domain_name, local_part, customer_id, mailbox_id, quota in rows:
            usage = store.usage(MailboxRef(domain_name, local_part))
            total_bytes += usage.bytes
            total_messages += usage.messages
            count += 1
            acc = per_customer.setdefault(customer_id, [0, 0, 0])
            acc[0] += usage.bytes
            acc[1] += usage.messages
            acc[2] += 1
            if quota and usage.bytes * 100 >= near_percent * quota:
                near.append(
                    NearQuota(mailbox_id, f"{local_part}@{domain_name}", usage.bytes, quota)
                )
    near.sort(key=lambda n: n.used / n.quota, reverse=True)
    figures = {cid: StorageFigure(*values) for cid, values in per_customer.items()}
    day = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).date()
    try:
        with transaction(factory) as session:
            record_storage_snapshot(session, day=day, per_customer=figures)
    except Exception:  # a chart's history is not worth failing the dashboard
        log.warning("could not write the storage snapshot of %s", day, exc_info=True)
    return StorageTotals(
        total_bytes,
        total_messages,
        count,
        time.time(),
        per_customer=figures,
        near_quota=tuple(near[:NEAR_QUOTA_LIMIT]),
    )
