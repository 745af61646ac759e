"""Large-message benchmark (issue 10, Major 6): greeting latency while one client sends a
pathological message, and the SMTP worker's peak memory for large messages.

Starts one real ingress worker process (``python -m smtp_ingress``, temp SQLite database and
Maildir, fsync on) per source tree and measures, per round:

* ``pathological``: a 40 MiB message of 2-octet lines (empty lines, every thousandth a
  stuffed dot) while a second client connects, reads the greeting and quits, again and
  again: greeting latency p50 / p99 / max (ms), the whole session's (connect to the reply
  to QUIT) p50 / max, and how many sessions were served;
* ``one 49 MB``: one ordinary message of 74-octet lines;
* ``eight 49 MB``: eight of those at once, to eight mailboxes;

and for each the worker's peak RSS increase (``VmHWM`` after, minus ``VmRSS`` before, the
peak reset through ``/proc/<pid>/clear_refs``) and the time to the final reply.

``--against DIR`` runs the same rounds, alternating, against the source tree in DIR (e.g.
main exported with ``git archive main | tar -x -C DIR``), with this checkout's Python
environment, and prints both sets of figures and the ratios, so before/after comes from one
run on the same noisy machine.

Measured 2026-12-02 on the shared 2-core machine, ``--against`` main (c566599) exported with
``git archive``, ``--rounds 2``, medians (this / main):

* pathological 40 MiB: peak RSS +2.6 MB / +2,001 MB; greeting p50 29 / 31 ms, max 128 ms /
  40.7 s; probe session max 325 ms / 59.9 s; message accepted after 8.5 / 61.9 s;
* one 49 MB: peak RSS +0.5 MB / +245 MB; eight 49 MB at once: +5.0 MB / +557 MB.

Usage: .venv/bin/python bench/smtp_large.py [--against DIR] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import Settings  # noqa: E402
from bench.smtp_ingest import free_port, make_message, seed, spawn  # noqa: E402

MIB = 1024 * 1024


def pathological(size: int) -> bytes:
    header = b"Subject: empty lines\r\n\r\n"
    block = b"\r\n" * 999 + b"..\r\n"
    return header + block * ((size - len(header)) // len(block))


def start(tree: Path, settings: Settings, cwd: Path) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "MAILHOST_DATABASE_URL": settings.database_url,
        "MAILHOST_MAILDIR_ROOT": str(settings.maildir_root),
        "MAILHOST_HOSTNAME": "mx.bench.example",
        "MAILHOST_SMTP_PORT": str(port),
        "MAILHOST_SMTP_GREET_DELAY": "0",
        "MAILHOST_SMTP_MAX_CONNECTIONS_PER_IP": "1000",
        "MAILHOST_SMTP_DATA_TIMEOUT": "600",
        "MAILHOST_LOG_LEVEL": "WARNING",
    }
    [proc] = spawn([sys.executable, "-m", "smtp_ingress"], env, 1, tree, cwd / "ingress.log")
    return proc, port


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> int:
    """Reset the peak RSS to the current one (proc(5) clear_refs "5"); returns it (KiB)."""
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")
    return _status_kib(pid, "VmRSS")


def _reply(fh: socket.SocketIO | object) -> bytes:
    reader = fh
    while True:
        line = reader.readline()  # type: ignore[attr-defined]
        if not line or line[3:4] != b"-":
            return bytes(line)


def send(port: int, rcpt: str, wire: bytes, result: list[tuple[bytes, float]]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        fh = sock.makefile("rb")
        _reply(fh)
        for command in (
            b"EHLO bench.example",
            b"MAIL FROM:<b@remote.example>",
            b"RCPT TO:<" + rcpt.encode() + b">",
            b"DATA",
        ):
            sock.sendall(command + b"\r\n")
            _reply(fh)
        began = time.perf_counter()
        sock.sendall(wire + b".\r\n")
        reply = _reply(fh)
        result.append((reply, time.perf_counter() - began))
        sock.sendall(b"QUIT\r\n")
        _reply(fh)


def greet_once(port: int) -> tuple[float, float]:
    """(connect to greeting, connect to the reply to QUIT) in seconds: the second shows a
    loop that is blocked after the greeting was sent."""
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        fh = sock.makefile("rb")
        line = _reply(fh)
        greeted = time.perf_counter() - began
        assert line.startswith(b"220"), line
        sock.sendall(b"QUIT\r\n")
        assert _reply(fh).startswith(b"221")
    return greeted, time.perf_counter() - began


def scenario(
    pid: int, port: int, rcpts: list[str], wire: bytes, *, probe: bool
) -> dict[str, float]:
    before = reset_peak(pid)
    results: list[tuple[bytes, float]] = []
    threads = [threading.Thread(target=send, args=(port, r, wire, results)) for r in rcpts]
    for thread in threads:
        thread.start()
    greetings: list[float] = []
    sessions: list[float] = []
    while probe and any(t.is_alive() for t in threads):
        greeted, served = greet_once(port)
        greetings.append(greeted)
        sessions.append(served)
    for thread in threads:
        thread.join()
    peak = _status_kib(pid, "VmHWM")
    if len(results) != len(rcpts) or not all(r.startswith(b"250") for r, _ in results):
        raise SystemExit(f"not every message was accepted: {[r for r, _ in results]}")
    figures = {"peak_mb": (peak - before) / 1024, "seconds": max(s for _, s in results)}
    if greetings:
        ordered = sorted(greetings)
        figures["greet_p50_ms"] = statistics.median(ordered) * 1000
        figures["greet_p99_ms"] = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        figures["greet_max_ms"] = ordered[-1] * 1000
        figures["greetings"] = len(ordered)
        figures["session_p50_ms"] = statistics.median(sessions) * 1000
        figures["session_max_ms"] = max(sessions) * 1000
    return figures


def run_tree(tree: Path, work: Path) -> dict[str, dict[str, float]]:
    settings = Settings(database_url=f"sqlite:///{work / 'bench.db'}", maildir_root=work / "mail")
    rcpts = seed(settings, 8)
    proc, port = start(tree, settings, work)
    try:
        time.sleep(0.5)  # let the worker settle before the first baseline
        out = {
            "pathological 40 MiB": scenario(
                proc.pid, port, rcpts[:1], pathological(40 * MIB), probe=True
            ),
        }
        shutil.rmtree(work / "mail", ignore_errors=True)
        big = make_message(49_000_000)
        out["one 49 MB"] = scenario(proc.pid, port, rcpts[:1], big, probe=False)
        shutil.rmtree(work / "mail", ignore_errors=True)
        out["eight 49 MB"] = scenario(proc.pid, port, rcpts, big, probe=False)
        return out
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--against", type=Path, help="another source tree to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    trees = {"this": REPO}
    if args.against is not None:
        trees["against"] = args.against.resolve()
    samples: dict[str, list[dict[str, dict[str, float]]]] = {name: [] for name in trees}
    for round_ in range(args.rounds):
        names = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for name in names:
            work = Path(tempfile.mkdtemp(prefix="mh-bench-large-"))
            samples[name].append(run_tree(trees[name], work))
            print(f"round {round_ + 1} {name} done", file=sys.stderr, flush=True)
    medians: dict[str, dict[str, dict[str, float]]] = {}
    for name, runs in samples.items():
        medians[name] = {
            case: {k: statistics.median(r[case][k] for r in runs) for k in runs[0][case]}
            for case in runs[0]
        }
    for name, tree in trees.items():
        print(f"\n{name}: {tree}  (median of {args.rounds} rounds)")
        for case, figures in medians[name].items():
            text = "  ".join(f"{k}={v:.1f}" for k, v in figures.items())
            print(f"  {case:22} {text}")
    if "against" in medians:
        print("\nratio this/against")
        for case, figures in medians["this"].items():
            other = medians["against"][case]
            text = "  ".join(f"{k}={v / other[k]:.2f}" for k, v in figures.items() if other.get(k))
            print(f"  {case:22} {text}")


if __name__ == "__main__":
    main()
