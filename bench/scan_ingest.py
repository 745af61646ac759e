"""Ingest with content scanning on and off, in the same run, alternating rounds.

Starts a private rspamd and clamd (tests/scanners.py: own config, loopback ports, the test DNS
server for rspamd's lookups), then ingress worker processes twice from the same database and
Maildir: once with MAILHOST_SCAN_RSPAMD_ADDRESS / _CLAMD_ADDRESS set, once without. The load
is bench/smtp_ingest.py's pipelining client. Prints messages/s per mode, CPU milliseconds per
message of the Mailhost workers and of the scanners (rspamd's processes, clamd), and the ratio
scanned/unscanned. The reject threshold is raised so every message is stored (the figure is
the cost of scanning accepted mail, the worst case).

Usage: .venv/bin/python bench/scan_ingest.py [--workers 2] [--messages 300] [--size 4096]
       [--concurrency 8] [--rounds 3]
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

from app.config import Settings  # noqa: E402
from bench.smtp_ingest import cpu_seconds, free_port, make_message, measure, seed, spawn  # noqa: E402
from tests.dnsserver import TestDNSServer  # noqa: E402
from tests.scanners import Clamd, Rspamd, cache_dir  # noqa: E402


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (rspamd's main process forks its workers)."""
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                for child in fh.read().split():
                    out += tree(int(child))
    except OSError:
        pass
    return out


def start(
    settings: Settings, workers: int, cwd: Path, scan: dict[str, str]
) -> tuple[list[subprocess.Popen[str]], int]:
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
        "MAILHOST_SCAN_REJECT_SCORE": "1000",
        **scan,
    }
    return spawn(
        [sys.executable, "-m", "smtp_ingress"], env, workers, cwd, cwd / "ingress.log"
    ), port


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="scan-bench-") as tmp:
        root = Path(tmp)
        settings = Settings(
            database_url=f"sqlite:///{root / 'bench.db'}", maildir_root=root / "mail"
        )
        rcpts = seed(settings, 50)
        dns = TestDNSServer().start()
        (root / "rspamd").mkdir()
        (root / "clamd").mkdir()
        rspamd = Rspamd(root / "rspamd", dns_port=dns.port, cache_dir=cache_dir())
        clamd = Clamd(root / "clamd")
        scan_env = {
            "MAILHOST_SCAN_RSPAMD_ADDRESS": rspamd.address,
            "MAILHOST_SCAN_CLAMD_ADDRESS": clamd.address,
        }
        plain, plain_port = start(settings, args.workers, root, {})
        scanned, scanned_port = start(settings, args.workers, root, scan_env)
        message = make_message(args.size)
        results: dict[str, list[tuple[float, float, float]]] = {"off": [], "on": []}
        try:
            for _ in range(args.rounds):
                for mode, procs, port in (
                    ("off", plain, plain_port),
                    ("on", scanned, scanned_port),
                ):
                    scanners = tree(rspamd.process.pid) + [clamd.process.pid]
                    before = cpu_seconds(scanners)
                    sample = measure(
                        [p.pid for p in procs],
                        port,
                        rcpts,
                        args.messages,
                        args.concurrency,
                        message,
                    )
                    scanner_ms = (cpu_seconds(scanners) - before) * 1000 / args.messages
                    if sample.failed:
                        raise SystemExit(f"{sample.failed} messages refused in mode {mode}")
                    results[mode].append((sample.rate, sample.server_ms, scanner_ms))
        finally:
            for proc in plain + scanned:
                proc.terminate()
                proc.wait(10)
            rspamd.stop()
            clamd.stop()
            dns.stop()
    print(
        f"size={args.size} C={args.concurrency} messages/round={args.messages} "
        f"workers={args.workers} rounds={args.rounds} (medians)"
    )
    med = {m: [statistics.median(r[i] for r in results[m]) for i in range(3)] for m in results}
    for mode in ("off", "on"):
        rate, ours, scanners = med[mode]
        print(
            f"  scanning {mode:3}: {rate:8.1f} msg/s  Mailhost CPU {ours:6.2f} ms/msg  "
            f"scanners CPU {scanners:6.2f} ms/msg"
        )
    print(f"  ratio on/off: {med['on'][0] / med['off'][0]:.2f} x messages/s")


if __name__ == "__main__":
    main()
