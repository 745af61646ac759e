"""Relay-domain ingest benchmark: how fast the MX accepts mail for a relay domain (recipient
list check, spool file fsync'd, queue rows committed before 250), next to the same MX storing
for hosted mailboxes, and Postfix doing the relay job (``relay_domains`` +
``relay_recipient_maps``, mail held in its queue by a HOLD header check so nothing leaves),
in the SAME run, alternating rounds; medians and ratios printed.

Both MXs get the same pipelining client (``bench/smtp_ingest.py``'s) and the same messages;
Postfix's CPU is its whole process tree (master, smtpd, cleanup, qmgr...), ours the worker
processes'. The Postfix instance needs root (``postfix -c DIR start``); without it only our
two figures are printed.

Usage: .venv/bin/python bench/relay_ingest.py [--workers 2] [--messages 1000]
       [--size 4096] [--concurrency 8] [--rounds 3] [--recipients 50] [--no-postfix]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import Settings  # noqa: E402
from app.db import make_engine, make_session_factory, transaction  # noqa: E402
from app.models import Customer, RelayDomain, RelayRecipient  # noqa: E402
from app.models import Domain as DomainRow  # noqa: E402
from bench.delivery import POSTFIX_DAEMONS, ensure_postfix, tree_cpu  # noqa: E402
from bench.smtp_ingest import (  # noqa: E402
    cpu_seconds,
    free_port,
    make_message,
    run_load,
    seed,
    start_ours,
)

RELAY = "relay.bench.example"


def seed_relay(settings: Settings, recipients: int) -> list[str]:
    engine = make_engine(settings)
    with transaction(make_session_factory(engine)) as s:
        customer = Customer(name="Relay bench")
        s.add(customer)
        s.flush()
        domain = DomainRow(name=RELAY, customer_id=customer.id, kind="relay")
        s.add(domain)
        s.flush()
        # An unreachable next hop: the mail stays queued (nothing delivers in this bench).
        s.add(RelayDomain(domain_id=domain.id, next_hop="127.0.0.1:9", flush_networks=""))
        s.add_all(
            RelayRecipient(domain_id=domain.id, local_part=f"r{i}") for i in range(recipients)
        )
    engine.dispose()
    return [f"r{i}@{RELAY}" for i in range(recipients)]


class RelayPostfix:
    """A private Postfix that is the MX of RELAY for the listed recipients, holding the mail."""

    def __init__(self, root: Path, port: int, rcpts: list[str]) -> None:
        self.root = root
        self.port = port
        self.conf = root / "etc"
        self.conf.mkdir(parents=True)
        (root / "queue").mkdir()
        (root / "data").mkdir()
        shutil.chown(root / "data", "postfix")
        (self.conf / "recipients").write_text("".join(f"{r} ok\n" for r in rcpts))
        (self.conf / "hold").write_text("/^Subject: bench/ HOLD\n")
        (self.conf / "main.cf").write_text(
            f"""compatibility_level = 3.6
queue_directory = {root / "queue"}
data_directory = {root / "data"}
command_directory = /usr/sbin
daemon_directory = {POSTFIX_DAEMONS}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydestination =
local_transport = error:no local delivery in the bench
relay_domains = {RELAY}
relay_recipient_maps = texthash:{self.conf / "recipients"}
relay_transport = smtp:[127.0.0.1]:9
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 192.0.2.1/32
smtpd_relay_restrictions = reject_unauth_destination
header_checks = regexp:{self.conf / "hold"}
smtp_dns_support_level = disabled
maillog_file_prefixes = {root}
maillog_file = {root / "maillog"}
"""
        )
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            cols = line.split()
            if line[:1] not in ("", "#", " ", "\t") and len(cols) >= 8:
                if cols[0] in ("smtp", "submission", "smtps") and cols[1] == "inet":
                    continue
                cols[4] = "n"
                line = " ".join(cols)
            lines.append(line)
        lines.append(f"127.0.0.1:{port} inet n - n - - smtpd")
        (self.conf / "master.cf").write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        subprocess.run(["postfix", "-c", str(self.conf), "start"], check=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.recv(100)
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.conf), "stop"], check=False)

    @property
    def master_pid(self) -> int:
        return int((self.root / "queue" / "pid" / "master.pid").read_text().split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--recipients", type=int, default=50)
    parser.add_argument("--no-postfix", action="store_true")
    args = parser.parse_args()
    why_not = "--no-postfix" if args.no_postfix else ensure_postfix()
    message = make_message(args.size)
    with tempfile.TemporaryDirectory(prefix="mh-relay-bench-") as folder:
        root = Path(folder)
        os.chmod(root, 0o755)
        settings = Settings(
            database_url=f"sqlite:///{root / 'bench.db'}",
            maildir_root=root / "mail",
            _env_file=None,  # type: ignore[call-arg]
        )
        hosted = seed(settings, args.recipients)
        relayed = seed_relay(settings, args.recipients)
        ours, ours_port = start_ours(settings, args.workers, root)
        pids = [p.pid for p in ours]
        pf: RelayPostfix | None = None
        if why_not is None:
            pf = RelayPostfix(root / "postfix", free_port(), relayed)
            pf.start()
        print(
            f"{args.rounds} alternating round(s) of {args.messages} messages of {args.size} "
            f"octets, C={args.concurrency}, ours {args.workers} worker(s); cpus={os.cpu_count()}; "
            f"load average {os.getloadavg()[0]:.1f}"
            + (f"; Postfix not run: {why_not}" if why_not else "")
        )
        results: dict[str, list[tuple[float, float]]] = {"hosted": [], "relay": [], "postfix": []}
        try:
            for _ in range(args.rounds):
                for name, port, rcpts in (
                    ("relay", ours_port, relayed),
                    ("hosted", ours_port, hosted),
                    ("postfix", pf.port if pf else 0, relayed),
                ):
                    if name == "postfix" and pf is None:
                        continue
                    cpu0 = (
                        tree_cpu(pf.master_pid) if name == "postfix" and pf else cpu_seconds(pids)
                    )
                    elapsed, ok, failed = asyncio.run(
                        run_load(port, rcpts, args.messages, args.concurrency, message)
                    )
                    cpu1 = (
                        tree_cpu(pf.master_pid) if name == "postfix" and pf else cpu_seconds(pids)
                    )
                    if failed or ok != args.messages:
                        raise SystemExit(f"{name}: {failed} refused, {ok} accepted")
                    results[name].append((ok / elapsed, (cpu1 - cpu0) * 1000 / ok))
                    print(
                        f"  {name:8} {ok / elapsed:7.0f} msg/s"
                        f"  {(cpu1 - cpu0) * 1000 / ok:6.2f} ms CPU/msg",
                        flush=True,
                    )
        finally:
            for proc in ours:
                proc.terminate()
            for proc in ours:
                proc.wait(30)
            if pf is not None:
                pf.stop()
        med = {
            k: (statistics.median(r for r, _ in v), statistics.median(c for _, c in v))
            for k, v in results.items()
            if v
        }
        print("medians:")
        for name, (rate, cpu) in med.items():
            print(f"  {name:8} {rate:7.0f} msg/s  {cpu:6.2f} ms CPU/msg")
        relay_vs_hosted = statistics.median(
            r[0] / h[0] for r, h in zip(results["relay"], results["hosted"], strict=True)
        )
        print(f"  relay/hosted rate ratio {relay_vs_hosted:.2f}")
        if results["postfix"]:
            ratio = statistics.median(
                r[0] / p[0] for r, p in zip(results["relay"], results["postfix"], strict=True)
            )
            cpu_ratio = med["relay"][1] / med["postfix"][1]
            print(
                f"  mailhost relay/postfix relay rate ratio {ratio:.2f},"
                f" CPU per message ratio {cpu_ratio:.2f}"
            )


if __name__ == "__main__":
    main()
