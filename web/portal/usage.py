"""Storage totals for the dashboard: Maildir usage summed over all mailboxes, cached.

Summing ``MaildirStore.usage`` means one directory scan per mailbox: about a millisecond each,
so minutes for 100,000 mailboxes - far too slow for a page view. The totals are therefore
computed by a background thread and cached for ``TTL_SECONDS``; a page view never waits for
a scan unless the platform is small (``INLINE_LIMIT`` mailboxes or fewer), where a fresh
figure is cheaper than a stale one. The dashboard says how old the figure is.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.maildir import MailboxRef, MaildirStore
from app.models import Domain, Mailbox
from app.services.charts import StorageFigure, record_storage_snapshot

log = logging.getLogger("web.usage")
# The portal lists at most this many mailboxes near their quota (fullest first).
NEAR_QUOTA_LIMIT = 100

TTL_SECONDS = 60.0
INLINE_LIMIT = 2000


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
    factory: sessionmaker[Session], store: MaildirStore, *, near_percent: int = 80
) -> StorageTotals:
    """Scan every mailbox once (the database is read in batches, not all at once); also the
    storage per customer (written as today's snapshot for the customer charts) and the
    mailboxes at ``near_percent`` of their quota or more."""
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
    try:
        with transaction(factory) as session:
            record_storage_snapshot(
                session, day=dt.datetime.now(dt.UTC).date(), per_customer=figures
            )
    except Exception:  # a chart's history is not worth failing the dashboard
        log.warning("could not write today's storage snapshot", exc_info=True)
    return StorageTotals(
        total_bytes,
        total_messages,
        count,
        time.time(),
        per_customer=figures,
        near_quota=tuple(near[:NEAR_QUOTA_LIMIT]),
    )


class UsageCache:
    """Latest totals plus at most one refresh running in the background."""

    def __init__(
        self, factory: sessionmaker[Session], store: MaildirStore, *, near_percent: int = 80
    ) -> None:
        self._factory = factory
        self._store = store
        self._near_percent = near_percent
        self._lock = threading.Lock()
        self._totals: StorageTotals | None = None
        self._refreshing = False

    def get(self, session: Session) -> StorageTotals | None:
        """Cached totals (refreshed in the background when stale); None while the first
        scan of a large platform is still running."""
        with self._lock:
            totals = self._totals
        if totals is not None and time.time() - totals.computed_at < TTL_SECONDS:
            return totals
        mailboxes = session.scalar(select(func.count(Mailbox.id))) or 0
        if mailboxes <= INLINE_LIMIT:
            return self.refresh_now()
        self._refresh_in_background()
        return totals

    def refresh_now(self) -> StorageTotals:
        totals = compute_totals(self._factory, self._store, near_percent=self._near_percent)
        with self._lock:
            self._totals = totals
        return totals

    def invalidate(self) -> None:
        with self._lock:
            self._totals = None

    def _refresh_in_background(self) -> None:
        with self._lock:
            if self._refreshing:
                return
            self._refreshing = True

        def run() -> None:
            try:
                self.refresh_now()
            finally:
                with self._lock:
                    self._refreshing = False

        threading.Thread(target=run, name="mailhost-usage-totals", daemon=True).start()
