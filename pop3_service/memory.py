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


def give_back() -> None:
    """Collect garbage, then hand free heap pages back to the kernel (blocking: call it in a
    thread).  pymalloc returns its arenas by itself once they are empty; glibc keeps freed
    large blocks in its heap until ``malloc_trim``."""
    gc.collect()
    if _malloc_trim is not None:
        _malloc_trim(0)
