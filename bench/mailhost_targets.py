"""How the SMTP anchor bench runs Mailhost (``bench/anchor_smtp.py --targets``).

A target is ``<shape>[:<loop>]``:

* ``workers``: N independent ``python -m smtp_ingress`` processes sharing the port with
  SO_REUSEPORT (what the bench ran before ``--targets``);
* ``split``: the split MX service as an operator runs it, ``mailhost smtp --workers N`` (the
  prefork supervisor and its N workers);
* ``serve``: ``mailhost serve``, every edge and the delivery agent in one process and loop;

and ``<loop>`` is ``uvloop`` or ``asyncio`` (MAILHOST_EVENT_LOOP; default ``auto``, which is
uvloop when installed). Every target shares the bench's database and Maildir root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from app.config import Settings
from app.readiness import parse_ready_line
from bench.anchors import free_port, tree_cpu_seconds

REPO = Path(__file__).resolve().parents[1]
SHAPES = ("workers", "split", "serve")
LOOPS = ("auto", "uvloop", "asyncio")
START_TIMEOUT = 120.0


@dataclass(frozen=True)
class Target:
    shape: str
    loop: str
    tree: Path = REPO  # the checkout whose code runs (--baseline-tree: another one)

    @property
    def label(self) -> str:
        label = self.shape if self.loop == "auto" else f"{self.shape}-{self.loop}"
        return label if self.tree == REPO else f"base-{label}"


def parse_targets(text: str) -> list[Target]:
    targets = []
    for item in text.split(","):
        shape, _, loop = item.strip().partition(":")
        loop = loop or "auto"
        if shape not in SHAPES or loop not in LOOPS:
            raise SystemExit(f"--targets: {item!r} is not <{'|'.join(SHAPES)}>[:uvloop|:asyncio]")
        targets.append(Target(shape, loop))
    return targets


@dataclass
class Running:
    target: Target
    procs: list[subprocess.Popen[str]]
    port: int

    def cpu_seconds(self) -> float:
        return sum(tree_cpu_seconds(p.pid) for p in self.procs)

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _env(settings: Settings, target: Target, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(target.tree),
        "MAILHOST_DATABASE_URL": settings.database_url,
        "MAILHOST_MAILDIR_ROOT": str(settings.maildir_root),
        "MAILHOST_HOSTNAME": "mx.bench.example",
        "MAILHOST_SMTP_HOST": "127.0.0.1",
        "MAILHOST_SMTP_PORT": str(port),
        "MAILHOST_SMTP_GREET_DELAY": "0",
        "MAILHOST_SMTP_MAX_CONNECTIONS_PER_IP": "1000",
        "MAILHOST_EVENT_LOOP": target.loop,
        # INFO as in production: one line per transaction, written to a file (the figure
        # includes the logging cost).
        "MAILHOST_LOG_LEVEL": "INFO",
        # serve's other edges, on ports of their own.
        "MAILHOST_POP3_PORT": str(free_port()),
        "MAILHOST_WEB_PORT": str(free_port()),
        "MAILHOST_SUBMISSION_PORT": str(free_port()),
        "MAILHOST_SUBMISSIONS_PORT": str(free_port()),
    }


def _wait_ready(proc: subprocess.Popen[str], log: Path, service: str, count: int) -> None:
    """Until ``log`` holds ``count`` readiness lines of ``service`` (the CLI writes them to
    stderr, between its log records)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        ready = [r for r in map(parse_ready_line, lines) if r is not None and r.service == service]
        if len(ready) >= count:
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = "\n".join(lines[-20:])
            raise SystemExit(f"mailhost ({service}) did not start:\n{tail}")
        time.sleep(0.1)


def stamp_head(settings: Settings) -> None:
    """``mailhost serve`` migrates first: mark the bench's create_all schema as at head."""
    from alembic import command

    from app.migrations import alembic_config

    command.stamp(alembic_config(settings.database_url), "head")


def start(target: Target, settings: Settings, workers: int, cwd: Path) -> Running:
    port = free_port()
    env = _env(settings, target, port)
    folder = cwd / f"mailhost-{target.label}"
    folder.mkdir(exist_ok=True)
    log = folder / "mailhost.log"
    if target.shape == "workers":
        procs = []
        for _ in range(workers):
            with open(log, "a") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "smtp_ingress"],
                    cwd=folder,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                )
            assert proc.stdout is not None
            if parse_ready_line(proc.stdout.readline()) is None:
                raise SystemExit(f"python -m smtp_ingress did not start: see {log}")
            procs.append(proc)
        return Running(target, procs, port)
    if target.shape == "split":
        argv = [sys.executable, "-m", "mailhost", "smtp", "--workers", str(workers)]
        service, count = "smtp", workers
    else:
        argv = [sys.executable, "-m", "mailhost", "serve"]
        service, count = "serve", 1
    with open(log, "a") as err:
        proc = subprocess.Popen(
            argv, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True
        )
    _wait_ready(proc, log, service, count)
    return Running(target, [proc], port)
