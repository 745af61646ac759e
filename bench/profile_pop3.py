"""Profile one Mailhost POP3 worker under one cell of ``bench/anchor_pop3.py`` with py-spy and
print the functions with the largest share of samples (inclusive, and self time).

Cells (issue 16's profile cases): ``--cell raw`` = 4 KiB x 1,000 RETR+DELE, raw client, 4
users; ``--cell poplib --foreign`` = the same with Python's ``poplib`` on files named as other
MTAs write them (no ``S=``/``W=``).  Needs ``py-spy`` (``.venv/bin/pip install py-spy``).

Usage: .venv/bin/python bench/profile_pop3.py [--cell raw|pipelined|poplib] [--foreign] [--users 4]
       [--messages 1000] [--runs 3] [--top 25] [--repo PATH: profile another checkout's code]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import anchor_pop3 as anchor  # noqa: E402
import pop3_download as pd  # noqa: E402
import pyspy_raw  # noqa: E402


def summarise(raw: Path, top: int) -> None:
    """Shares of samples: every thread, and the event loop thread alone (it bounds a worker)."""
    for only_loop in (False, True):

        def keep(frames: list[str], only_loop: bool = only_loop) -> bool:
            return not only_loop or any("run_forever" in f for f in frames)

        inclusive, own, total = pyspy_raw.tally(raw, keep)
        what = "event loop thread" if only_loop else "all threads"
        print(f"{what}: {total} samples")
        if total:
            pyspy_raw.print_shares(inclusive, own, total, top, indent=" ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=("raw", "pipelined", "poplib"), default="raw")
    parser.add_argument("--foreign", action="store_true", help="files named as other MTAs do")
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--repo", type=Path, default=pd.REPO)
    args = parser.parse_args()
    spy = Path(sys.executable).parent / "py-spy"
    if not spy.exists():
        print("note: py-spy is missing (.venv/bin/pip install py-spy); no profile taken")
        return
    foreign = args.foreign
    with tempfile.TemporaryDirectory(prefix="pop3-profile-") as tmp:
        scratch = Path(tmp)
        settings, addresses = pd.setup(scratch, f"sqlite:///{scratch / 'bench.db'}", users=4)
        users = addresses[: args.users]
        raw = scratch / "profile.txt"
        pd.REPO = args.repo.resolve()
        port, procs, pids = pd.start_workers(settings, 1, pd.REPO, str(raw))
        rates = []
        try:
            for _ in range(args.runs):
                anchor.fill_maildirs(settings.maildir_root, users, args.messages, 4096, foreign)
                began = time.perf_counter()
                if args.cell == "poplib":
                    anchor.run_poplib(port, users)
                    took = time.perf_counter() - began
                else:
                    took = anchor.run_raw(port, users, args.cell == "pipelined")
                rates.append(args.messages * len(users) / took)
        finally:
            for pid in pids:  # stop the server itself: the sampler then writes its profile
                os.kill(pid, signal.SIGTERM)
            for proc in procs:
                proc.wait(60)
        print(
            f"{args.cell}{', foreign names' if foreign else ''}, 4 KiB x {args.messages},"
            f" {len(users)} user(s), {args.runs} runs,"
            f" profiled at 400 Hz: {', '.join(f'{r:.0f}' for r in rates)} msg/s"
            " (py-spy slows the worker; read shares, not rates)"
        )
        summarise(raw, args.top)


if __name__ == "__main__":
    main()
