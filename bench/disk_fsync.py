"""Baseline: how many files per second this disk takes with write + fsync + rename (+ the
directory fsync Maildir delivery also needs), sequentially or from several threads.

Usage: python bench/disk_fsync.py [--size 4096] [--count 1000] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _one(root: Path, n: int, payload: bytes, dir_fsync: bool) -> None:
    tmp = root / "tmp" / f"{threading.get_ident()}.{n}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, root / "new" / tmp.name)
    if dir_fsync:
        dfd = os.open(root / "new", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def measure(
    size: int, count: int, *, threads: int = 1, dir_fsync: bool = True, where: Path | None = None
) -> float:
    """Files per second for ``count`` files of ``size`` octets."""
    payload = os.urandom(size)
    with tempfile.TemporaryDirectory(dir=where) as folder:
        root = Path(folder)
        (root / "tmp").mkdir()
        (root / "new").mkdir()
        start = time.perf_counter()
        if threads == 1:
            for n in range(count):
                _one(root, n, payload, dir_fsync)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda n: _one(root, n, payload, dir_fsync), range(count)))
        return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="directory on the disk to test")
    args = parser.parse_args()
    rate = measure(args.size, args.count, threads=args.threads, where=args.dir)
    print(
        f"write+fsync+rename+dirfsync size={args.size} threads={args.threads}: "
        f"{rate:.0f} files/s, {rate * args.size / 1e6:.1f} MB/s"
    )


if __name__ == "__main__":
    main()
