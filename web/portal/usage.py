"""Storage totals for the dashboard: Maildir usage summed over all mailboxes, cached.

Summing ``MaildirStore.usage`` means one directory scan per mailbox: about a millisecond each,
so minutes for 100,000 mailboxes - far too slow for a page view. The totals are therefore
computed by a background thread and cached for ``TTL_SECONDS``; a page view never waits for
a scan unless the platform is small (``INLINE_LIMIT`` mailboxes or fewer), where a fresh
figure is cheaper than a stale one. The dashboard says how old the figure is. The scan
itself is app/storage_usage.py (the periodic jobs run it too, for the daily snapshot).
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.maildir import MaildirStore
from app.models import Mailbox
from app.storage_usage import StorageTotals, compute_totals

__all__ = ["INLINE_LIMIT", "TTL_SECONDS", "StorageTotals", "UsageCache"]

TTL_SECONDS = 60.0
INLINE_LIMIT = 2000


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
