"""Storage totals for the dashboard: Maildir usage summed over all mailboxes, cached.

Summing ``MaildirStore.usage`` means one directory scan per mailbox: about a millisecond each,
so minutes for 100,000 mailboxes - far too slow for a page view. The totals are therefore
computed by a background thread and cached for ``TTL_SECONDS``; a page view never waits for
a scan unless the platform is small (``INLINE_LIMIT`` mailboxes or fewer), where a fresh
figure is cheaper than a stale one. The dashboard says how old the figure is.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.maildir import MailboxRef, MaildirStore
from app.models import Domain, Mailbox

TTL_SECONDS = 60.0
INLINE_LIMIT = 2000


@dataclass(frozen=True, slots=True)
class StorageTotals:
    bytes: int
    messages: int
    mailboxes: int
    computed_at: float  # time.time()


def compute_totals(factory: sessionmaker[Session], store: MaildirStore) -> StorageTotals:
    """Scan every mailbox once (the database is read in batches, not all at once)."""
    total_bytes = total_messages = count = 0
    with factory() as session:
        rows = session.execute(
            select(Domain.name, Mailbox.local_part)
            .join(Domain, Mailbox.domain_id == Domain.id)
            .execution_options(yield_per=2000)
        )
        for domain_name, local_part in rows:
            usage = store.usage(MailboxRef(domain_name, local_part))
            total_bytes += usage.bytes
            total_messages += usage.messages
            count += 1
    return StorageTotals(total_bytes, total_messages, count, time.time())


class UsageCache:
    """Latest totals plus at most one refresh running in the background."""

    def __init__(self, factory: sessionmaker[Session], store: MaildirStore) -> None:
        self._factory = factory
        self._store = store
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
        totals = compute_totals(self._factory, self._store)
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
