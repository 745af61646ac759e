"""Profile one Mailhost ingress worker under ``smtp-source`` load with py-spy and print the
functions with the largest share of samples (inclusive, and self time).

Default load: 4 KiB messages, C=8, a new connection per message (issue 16's profile case),
greet delay 0, INFO logging to a file as in production. Needs ``py-spy``
(``.venv/bin/pip install py-spy``) and Postfix's ``smtp-source`` (``bench/anchors.py``
installs postfix when missing).

Usage: .venv/bin/python bench/profile_ingress.py [--messages 3000] [--size 4096] [-c 8]
       [--top 25] [--repo PATH: profile another checkout's code] [--event-loop uvloop]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import Settings  # noqa: E402
from bench import pyspy_raw  # noqa: E402
from bench.anchors import SMTP_SOURCE, ensure_package, free_port  # noqa: E402
from bench.smtp_ingest import seed  # noqa: E402


def _cpu_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("-c", type=int, default=8)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--repo", type=Path, default=REPO)
    parser.add_argument(
        "--threads",
        default="loop",
        choices=("loop", "all"),
        help="loop: the event loop thread only (it bounds throughput); all: the I/O threads too",
    )
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw stacks here")
    parser.add_argument(
        "--gil", action="store_true", help="sample only the thread holding the GIL (Python CPU)"
    )
    parser.add_argument(
        "--event-loop",
        default="asyncio",
        choices=("auto", "asyncio", "uvloop"),
        help="MAILHOST_EVENT_LOOP of the profiled worker (uvloop's own frames are C: not seen)",
    )
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(pyspy):
        # `make bench` runs every script: say what is missing, without failing the others.
        print("note: py-spy is missing (.venv/bin/pip install py-spy); no profile taken")
        return
    if not ensure_package("postfix", SMTP_SOURCE):
        print("note: smtp-source (package postfix) is missing; no profile taken")
        return
    with tempfile.TemporaryDirectory(prefix="mh-profile-") as folder:
        root = Path(folder)
        settings = Settings(
            database_url=f"sqlite:///{root / 'bench.db'}",
            maildir_root=root / "mail",
            _env_file=None,  # type: ignore[call-arg]
        )
        rcpts = seed(settings, 10)
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(args.repo),
            "MAILHOST_DATABASE_URL": settings.database_url,
            "MAILHOST_MAILDIR_ROOT": str(settings.maildir_root),
            "MAILHOST_HOSTNAME": "mx.bench.example",
            "MAILHOST_SMTP_PORT": str(port),
            "MAILHOST_SMTP_GREET_DELAY": "0",
            "MAILHOST_SMTP_MAX_CONNECTIONS_PER_IP": "1000",
            "MAILHOST_LOG_LEVEL": "INFO",
            "MAILHOST_EVENT_LOOP": args.event_loop,
        }
        raw = root / "profile.txt"
        with open(root / "ingress.log", "w") as log:
            server = subprocess.Popen(
                [sys.executable, "-m", "smtp_ingress"],
                cwd=args.repo,
                env=env,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        assert server.stdout is not None
        server.stdout.readline()  # the ready line
        spy = subprocess.Popen(
            [
                pyspy,
                "record",
                "--nonblocking",
                "-r",
                "200",
                "-f",
                "raw",
                "-o",
                str(raw),
                "-p",
                str(server.pid),
                *(["--gil"] if args.gil else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
        start = time.perf_counter()
        subprocess.run(
            [SMTP_SOURCE, "-l", str(args.size), "-m", str(args.messages), "-s", str(args.c)]
            + ["-f", "bench@remote.example", "-t", rcpts[0], f"127.0.0.1:{port}"],
            check=True,
        )
        elapsed = time.perf_counter() - start
        user, system = _cpu_split(server.pid)
        spy.send_signal(2)  # SIGINT: py-spy writes the profile and exits
        spy.wait(60)
        server.terminate()
        server.wait(30)
        if args.raw is not None:
            shutil.copyfile(raw, args.raw)

        def keep(frames: list[str]) -> bool:
            # Only the event loop (main) thread: it bounds throughput (one loop).
            return args.threads != "loop" or not any(
                "_bootstrap (threading.py)" in f for f in frames
            )

        inclusive, own, total = pyspy_raw.tally(raw, keep)
        print(
            f"{args.messages} messages of {args.size} B, C={args.c}, new connection per message:"
            f" {args.messages / elapsed:.0f} msg/s (1 worker on {args.event_loop}, profiled);"
            f" {total} samples"
            " of the event loop thread (the I/O threads are left out; idle time is not sampled)"
        )
        print(
            f"worker CPU over the run: user {user:.2f} s, system {system:.2f} s"
            f" ({1000 * (user + system) / args.messages:.2f} ms per message)"
        )
        pyspy_raw.print_shares(inclusive, own, total, args.top)


if __name__ == "__main__":
    main()
