"""Baseline: how many files per second this disk takes with write + fsync + rename (+ the
directory fsync Maildir delivery also needs), sequentially or from several threads.

``--batch N`` measures group commit instead: N files written, their fsyncs issued one after
the other from one thread or all at once from N threads, then renamed, then one directory
fsync per batch. On the project's 2-core ext4 test machine, batches of 8 (either way) gave
1,600-2,000 files/s, the same as 8 independent threads (jbd2 already merges concurrent
fsyncs); under heavier I/O from other jobs, one thread's fsyncs in a row cost ~2.5 ms each.

Usage: python bench/disk_fsync.py [--size 4096] [--count 1000] [--threads 1] [--batch N]
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


def _batch(root: Path, k: int, n: int, payload: bytes, pool: ThreadPoolExecutor | None) -> None:
    staged = []
    for i in range(n):
        tmp = root / "tmp" / f"{k}.{i}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, payload)
        staged.append((fd, tmp))
    try:
        if pool is None:
            for fd, _ in staged:
                os.fsync(fd)
        else:
            list(pool.map(lambda item: os.fsync(item[0]), staged))
    finally:
        for fd, _ in staged:
            os.close(fd)
    for _, tmp in staged:
        os.rename(tmp, root / "new" / tmp.name)
    dfd = os.open(root / "new", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def measure_batches(size: int, count: int, batch: int, *, parallel: bool) -> float:
    """Files per second when ``count`` files are committed in groups of ``batch``."""
    payload = os.urandom(size)
    with tempfile.TemporaryDirectory() as folder, ThreadPoolExecutor(batch) as pool:
        root = Path(folder)
        (root / "tmp").mkdir()
        (root / "new").mkdir()
        rounds = max(1, count // batch)
        start = time.perf_counter()
        for k in range(rounds):
            _batch(root, k, batch, payload, pool if parallel else None)
        return rounds * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=None, help="directory on the disk to test")
    parser.add_argument("--batch", type=int, default=0, help="group commit of N files")
    args = parser.parse_args()
    if args.batch:
        for parallel in (False, True):
            rate = measure_batches(args.size, args.count, args.batch, parallel=parallel)
            how = f"{args.batch} threads" if parallel else "one thread"
            print(
                f"batches of {args.batch}, file fsyncs from {how}, one directory fsync: "
                f"{rate:.0f} files/s ({args.batch / rate * 1000:.1f} ms per batch)"
            )
        return
    rate = measure(args.size, args.count, threads=args.threads, where=args.dir)
    print(
        f"write+fsync+rename+dirfsync size={args.size} threads={args.threads}: "
        f"{rate:.0f} files/s, {rate * args.size / 1e6:.1f} MB/s"
    )


if __name__ == "__main__":
    main()
