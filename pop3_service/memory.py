"""Giving memory back to the system after a session on a big mailbox (glibc's malloc_trim)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

# Sessions on at least this many messages are followed by a trim: their LIST/UIDL replies and
# the login's index reading allocate tens of MB, which glibc otherwise keeps in its heap.
BIG_SESSION = 10_000


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim  # glibc only; musl and others have no such function
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()

# mallopt(3) parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks this big or bigger get their own mapping, returned to the kernel when freed.  A fixed
# value also turns off glibc's dynamic threshold, which after the first free of a big block
# (an index file of 50,000 names) would keep every later one in the heap (to 32 MiB each).
# Above the blocks of a streamed RETR (256 KiB) and the transport's write buffer (1 MiB and a
# block), which are reused from the heap.
MMAP_THRESHOLD = 4 << 20
# Free memory at the top of the heap kept for reuse, as glibc's dynamic setting would have it
# (twice the mmap threshold): trimming at every free would fault the same pages in again on
# the next RETR of a large message.
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def tune_allocator() -> bool:
    """Set glibc's mmap threshold (once per worker, at start); False where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(
        mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def give_back() -> None:
    """Hand free heap pages back to the kernel (blocking: call it in a thread).  pymalloc
    returns its arenas by itself once they are empty; glibc keeps freed blocks in its heap
    until ``malloc_trim``.  No ``gc.collect()``: a snapshot holds no cycles (reference counts
    free it at logout), and a full collection of a worker's heap holds the GIL for tens of ms,
    which stalled the next login by as much (bench/anchor_pop3.py, login 10,000, second
    login: 147 ms against 49 ms).  ctypes releases the GIL for the trim itself."""
    if _malloc_trim is not None:
        _malloc_trim(0)
