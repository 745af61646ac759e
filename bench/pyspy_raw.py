"""Reading py-spy's raw output (``record --format raw``: one ``frame;frame;... count`` line per
stack) into shares of samples, for the profiling benchmarks."""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path


def frames_of(stack: str) -> list[str]:
    """``function (file.py)`` for each frame of one raw stack, outermost first."""
    return [
        f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
        for f in stack.split(";")
    ]


def tally(
    raw: Path, keep: Callable[[list[str]], bool] = lambda frames: True
) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    """Samples per frame, inclusive and self, and the total, over the stacks ``keep`` takes."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = frames_of(stack)
        if not keep(frames):
            continue
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
    return inclusive, own, total


def print_shares(
    inclusive: collections.Counter[str],
    own: collections.Counter[str],
    total: int,
    top: int,
    indent: str = "",
) -> None:
    print(f"{indent}inclusive:")
    for frame, count in inclusive.most_common(top):
        print(f"  {100 * count / total:5.1f} %  {frame}")
    print(f"{indent}self:")
    for frame, count in own.most_common(top):
        print(f"  {100 * count / total:5.1f} %  {frame}")
