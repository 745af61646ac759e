"""SMTP ingest with message tracking (or the Prometheus metrics) on and off, in one run,
alternating rounds.

Two sets of real ingress worker processes (``python -m smtp_ingress``), identical but for
``MAILHOST_TRACKING_ENABLED``, each with its own database and Maildir root, take the same load
from bench/smtp_ingest.py's pipelining client (N messages, C connections, one recipient
each). Rounds alternate on / off so the shared machine's load hits both; the medians and the
median of the per-round ratios on/off are printed, with server CPU per message. Tracking
writes two events per message here (received at RCPT, stored; nothing refused). On a noisy
machine the msg/s of single rounds swing widely; server CPU per message is the steadier cost.

``--compare metrics``: both sides track; the "on" side keeps its metrics as production
does (prometheus-client's multiprocess mode, memory-mapped files in a directory of its own,
as `mailhost smtp` sets up), the "off" side runs ``bench/ingress_metrics_off.py`` (every
instrument a no-op), so the ratio is the cost of the metrics hooks (connections, accepted,
stored bytes, the store-duration histogram, refusals).

Usage: .venv/bin/python bench/tracking_ingest.py [--compare tracking|metrics]
       [--messages 2000] [--concurrency 8] [--size 4096] [--rounds 5] [--workers 1]
       [--database-url postgresql://...]
       (with --database-url, PostgreSQL databases <name>_on and <name>_off are created)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import func, select  # noqa: E402

from app.config import Settings  # noqa: E402
from app.db import make_engine  # noqa: E402
from app.models import MessageEvent  # noqa: E402
from bench.smtp_ingest import free_port, make_message, measure, seed, spawn  # noqa: E402


def _pg_database(url: str, name: str) -> str:
    import psycopg
    from sqlalchemy.engine import make_url

    base = make_url(url)
    admin = base.set(drivername="postgresql", database="postgres").render_as_string(False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return base.set(database=name).render_as_string(False)


def start(
    settings: Settings, *, tracking: bool, workers: int, cwd: Path, metrics: bool = True
) -> tuple[list, int]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MAILHOST_DATABASE_URL": settings.database_url,
        "MAILHOST_MAILDIR_ROOT": str(settings.maildir_root),
        "MAILHOST_HOSTNAME": "mx.bench.example",
        "MAILHOST_SMTP_PORT": str(port),
        "MAILHOST_SMTP_GREET_DELAY": "0",
        "MAILHOST_SMTP_MAX_CONNECTIONS_PER_IP": "1000",
        "MAILHOST_LOG_LEVEL": "INFO",
        "MAILHOST_TRACKING_ENABLED": "true" if tracking else "false",
    }
    if metrics:
        # As `mailhost smtp` runs them: multiprocess mode, files in an emptied directory.
        directory = cwd / "metrics"
        directory.mkdir(exist_ok=True)
        for entry in directory.iterdir():
            entry.unlink()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
        argv = [sys.executable, "-m", "smtp_ingress"]
    else:
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        argv = [sys.executable, "-m", "bench.ingress_metrics_off"]
    return spawn(argv, env, workers, cwd, cwd / "ingress.log"), port


_HOOK_LOOP = """
import sys, time
from app import metrics
n = int(sys.argv[1])
metrics.instruments()
best = None
for _ in range(3):
    t = time.perf_counter()
    for _ in range(n):
        metrics.connection_opened("smtp")
        metrics.message_accepted("smtp", copies=1, size=4096, seconds=0.003)
        metrics.connection_closed("smtp")
    took = (time.perf_counter() - t) / n * 1e6
    best = took if best is None else min(best, took)
print(best)
"""


def hook_microseconds(count: int = 20_000) -> float:
    """The metrics hooks of one accepted message (connection opened and closed, accepted,
    stored bytes, store duration) in multiprocess mode, timed in a process of their own:
    the in-process cost the end-to-end rounds are too noisy to resolve on a shared box."""
    with tempfile.TemporaryDirectory(prefix="metrics-hooks-") as directory:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PROMETHEUS_MULTIPROC_DIR": directory}
        out = subprocess.run(
            [sys.executable, "-c", _HOOK_LOOP, str(count)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--mailboxes", type=int, default=50)
    parser.add_argument("--database-url", help="PostgreSQL server URL (default: SQLite files)")
    parser.add_argument(
        "--compare",
        choices=("tracking", "metrics"),
        default="tracking",
        help="what the two sides differ in (default: tracking)",
    )
    args = parser.parse_args()
    what = args.compare

    with tempfile.TemporaryDirectory(prefix="tracking-ingest-") as tmp:
        sides = {}
        for name, tracking in (("on", True), ("off", False)):
            root = Path(tmp) / name
            root.mkdir()
            if args.database_url:
                url = _pg_database(args.database_url, f"mh_bench_tracking_{name}")
            else:
                url = f"sqlite:///{root / 'mailhost.db'}"
            settings = Settings(
                database_url=url,
                maildir_root=root / "mail",
                _env_file=None,  # type: ignore[call-arg]
            )
            rcpts = seed(settings, args.mailboxes)
            if what == "tracking":
                procs, port = start(settings, tracking=tracking, workers=args.workers, cwd=root)
            else:  # tracking on both sides; `tracking` here says whether metrics are on
                procs, port = start(
                    settings, tracking=True, workers=args.workers, cwd=root, metrics=tracking
                )
            sides[name] = (settings, procs, port, rcpts)
        message = make_message(args.size)
        results: dict[str, list] = {"on": [], "off": []}
        ratios = []
        try:
            for n in range(args.rounds):
                order = ("on", "off") if n % 2 == 0 else ("off", "on")
                for name in order:
                    _, procs, port, rcpts = sides[name]
                    pids = [p.pid for p in procs]
                    sample = measure(pids, port, rcpts, args.messages, args.concurrency, message)
                    results[name].append(sample)
                    print(
                        f"round {n + 1} {what} {name:3}: {sample.rate:8.1f} msg/s "
                        f"{sample.server_ms:6.2f} ms CPU/msg failed={sample.failed}",
                        flush=True,
                    )
                ratios.append(results["on"][-1].rate / results["off"][-1].rate)
        finally:
            for _, procs, _, _ in sides.values():
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait(30)
        engine = make_engine(sides["on"][0])
        with engine.connect() as conn:
            events = conn.scalar(select(func.count()).select_from(MessageEvent))
        engine.dispose()
    on = statistics.median(s.rate for s in results["on"])
    off = statistics.median(s.rate for s in results["off"])
    cpu_on = statistics.median(s.server_ms for s in results["on"])
    cpu_off = statistics.median(s.server_ms for s in results["off"])
    print()
    database = "PostgreSQL" if args.database_url else "SQLite"
    print(f"messages {args.messages} x {args.rounds} rounds, {args.size} B, "
          f"C={args.concurrency}, {args.workers} worker(s), {database}")  # fmt: skip
    print(f"{what} on : median {on:8.1f} msg/s, {cpu_on:.2f} ms server CPU/msg")
    print(f"{what} off: median {off:8.1f} msg/s, {cpu_off:.2f} ms server CPU/msg")
    print(f"server CPU per message on/off: {cpu_on / cpu_off:.3f}")
    print(f"on/off: median of per-round ratios {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")  # fmt: skip
    print(f"events written by the tracking side: {events}")
    if what == "metrics":
        hooks = hook_microseconds()
        share = hooks / 10 / cpu_on  # us against ms, in per cent
        print(f"metrics hooks per accepted message, in-process (multiprocess mode): "
              f"{hooks:.1f} us = {share:.2f} % of the on side's server CPU/msg")  # fmt: skip


if __name__ == "__main__":
    main()
