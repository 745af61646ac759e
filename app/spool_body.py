"""A received message body that spills into the outbound spool's ``tmp/`` instead of a
Maildir: the MX uses it for transactions whose recipients are all at relay domains."""

from __future__ import annotations

from typing import Any, cast

from app.maildir import MaildirError, write_all
from app.maildir_stream import SPOOL_MEMORY_LIMIT, SpooledBody
from app.spool import SpoolStore


class SpoolSpilledBody(SpooledBody):
    """``SpooledBody`` whose spill file is created by ``SpoolStore.open_spill``."""

    def __init__(self, spool: SpoolStore, *, memory_limit: int = SPOOL_MEMORY_LIMIT) -> None:
        # The Maildir store and mailbox are used only by SpooledBody.flush, overridden here.
        super().__init__(cast(Any, None), cast(Any, None), memory_limit=memory_limit)
        self._spool = spool

    def flush(self) -> None:
        with self._lock:
            if self._discarded:
                raise MaildirError("the message body was discarded")
            chunks, self._chunks, self._buffered = self._chunks, [], 0
            if not chunks:
                return
            if self._fd is None:
                self._fd, self._path = self._spool.open_spill()
            write_all(self._fd, chunks)
            self._written += sum(len(c) for c in chunks)
