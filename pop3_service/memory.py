"""Giving memory back to the system after a session on a big mailbox (glibc's malloc_trim)."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
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
_M_MMAP_THRESHOLD = -3
# Blocks this big or bigger get their own mapping, returned to the kernel when freed.  A fixed
# value also turns off glibc's dynamic threshold, which after the first free of a big block
# (an index file, a LIST reply) would keep every later one in the heap.  Above the 256 KiB
# blocks of a streamed RETR, which are reused from the heap.
MMAP_THRESHOLD = 1 << 20


def tune_allocator() -> bool:
    """Set glibc's mmap threshold (once per worker, at start); False where there is none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def give_back() -> None:
    """Collect garbage, then hand free heap pages back to the kernel (blocking: call it in a
    thread).  pymalloc returns its arenas by itself once they are empty; glibc keeps freed
    large blocks in its heap until ``malloc_trim``."""
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)
