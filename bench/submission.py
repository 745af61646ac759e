"""Submission accept-rate benchmark: 4 KiB messages over C concurrent authenticated connections
(STARTTLS + AUTH PLAIN once per connection, then one message after another on it) to a real
``python -m smtp_submission`` process (temp SQLite database, Maildir and spool), smtplib
clients in threads. Each message goes to one hosted recipient (Maildir, fsync'd) and, with
``--remote`` (the default), also to one remote recipient (spool fsync'd + queue rows and the
sending counters committed) before its 250.

Prints accepted messages/s, server CPU milliseconds per message (utime + stime of the server
from ``/proc/<pid>/stat``) and the client's CPU share (if it nears 100 % of one core, the
client is the limit). Rounds alternate the concurrency levels; medians are printed.

Not done (say so, do not guess): a Postfix side-by-side. Postfix submission needs SASL
(Dovecot or Cyrus) wired to the same accounts; this script does not set that up.

Usage: .venv/bin/python bench/submission.py [--messages 400] [--concurrency 1,8,32]
       [--rounds 2] [--size 4096] [--no-remote]
"""

from __future__ import annotations

import argparse
import os
import smtplib
import ssl
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
from app.db import Base, make_engine, make_session_factory, transaction  # noqa: E402
from app.models import Customer, Domain, Mailbox  # noqa: E402
from app.passwords import hash_password  # noqa: E402
from app.readiness import parse_ready_line  # noqa: E402
from app.tls import generate_self_signed  # noqa: E402

DOMAIN = "bench.example"
PASSWORD = "bench password"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def seed(settings: Settings, senders: int) -> None:
    engine = make_engine(settings)
    Base.metadata.create_all(engine)
    pw = hash_password(PASSWORD)
    with transaction(make_session_factory(engine)) as s:
        customer = Customer(name="Bench")
        s.add(customer)
        s.flush()
        domain = Domain(name=DOMAIN, customer_id=customer.id)
        s.add(domain)
        s.flush()
        s.add(Mailbox(domain_id=domain.id, local_part="rcpt", password_hash=pw, quota_bytes=0))
        for i in range(senders):
            s.add(Mailbox(domain_id=domain.id, local_part=f"s{i}", password_hash=pw, quota_bytes=0))
    engine.dispose()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def make_message(sender: str, size: int) -> bytes:
    head = f"From: <{sender}>\r\nTo: <rcpt@{DOMAIN}>\r\nSubject: bench\r\n\r\n".encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return (head + body)[: size - 2].rsplit(b"\r\n", 1)[0] + b"\r\n"


def client_load(
    port: int, cafile: Path, n: int, c: int, size: int, remote: bool
) -> tuple[float, int]:
    """Send ``n`` messages over ``c`` connections; returns (seconds, accepted)."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.check_hostname = False
    per = [n // c + (1 if i < n % c else 0) for i in range(c)]
    accepted = [0] * c
    clients: list[smtplib.SMTP] = []
    for i in range(c):
        client = smtplib.SMTP("127.0.0.1", port, timeout=60)
        client.ehlo("bench.client")
        client.starttls(context=context)
        client.ehlo("bench.client")
        client.login(f"s{i}@{DOMAIN}", PASSWORD)
        clients.append(client)
    rcpts = [f"rcpt@{DOMAIN}"] + (["someone@remote.example"] if remote else [])

    def work(i: int) -> None:
        sender = f"s{i}@{DOMAIN}"
        data = make_message(sender, size)
        for _ in range(per[i]):
            clients[i].sendmail(sender, rcpts, data)
            accepted[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(c)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    for client in clients:
        client.quit()
    return elapsed, sum(accepted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--no-remote", action="store_true")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="mh-bench-sub-") as tmp:
        root = Path(tmp)
        settings = Settings(
            database_url=f"sqlite:///{root / 'mailhost.db'}",
            maildir_root=root / "mail",
            _env_file=None,  # type: ignore[call-arg]
        )
        seed(settings, max(levels))
        cert, key = root / "cert.pem", root / "key.pem"
        generate_self_signed(cert, key, hostname="submission.bench.example")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOST_")}
        env.update(
            PYTHONPATH=str(REPO),
            MAILHOST_DATABASE_URL=settings.database_url,
            MAILHOST_MAILDIR_ROOT=str(settings.maildir_root),
            MAILHOST_SPOOL_ROOT=str(root / "spool"),
            MAILHOST_HOSTNAME="submission.bench.example",
            MAILHOST_TLS_CERT_FILE=str(cert),
            MAILHOST_TLS_KEY_FILE=str(key),
            MAILHOST_SUBMISSION_PORT="0",
            MAILHOST_SUBMISSIONS_PORT="0",
            MAILHOST_SEND_MAILBOX_MESSAGES_PER_HOUR="100000000",
            MAILHOST_SEND_MAILBOX_RECIPIENTS_PER_DAY="100000000",
            MAILHOST_SEND_CUSTOMER_MESSAGES_PER_HOUR="100000000",
            MAILHOST_SEND_CUSTOMER_RECIPIENTS_PER_DAY="100000000",
            MAILHOST_LOG_LEVEL="INFO",
        )
        log = open(root / "submission.log", "w")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, *os.environ.get("BENCH_PROFILE", "").split(), "-m", "smtp_submission"],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            assert proc.stdout is not None
            ready = parse_ready_line(proc.stdout.readline())
            if ready is None:
                raise SystemExit(f"submission did not start; see {root / 'submission.log'}")
            port = ready.port("submission")
            results: dict[int, list[tuple[float, float, float]]] = {c: [] for c in levels}
            for _ in range(args.rounds):
                for c in levels:
                    cpu0, client0 = cpu_seconds(proc.pid), os.times()
                    elapsed, done = client_load(
                        port, cert, args.messages, c, args.size, not args.no_remote
                    )
                    cpu1, client1 = cpu_seconds(proc.pid), os.times()
                    client_cpu = (client1.user + client1.system) - (client0.user + client0.system)
                    results[c].append(
                        (done / elapsed, (cpu1 - cpu0) * 1000 / done, client_cpu / elapsed)
                    )
            what = "1 hosted + 1 remote recipient" if not args.no_remote else "1 hosted recipient"
            print(f"submission accept rate, {args.size} B messages, {what}, SQLite, TLS+AUTH")
            print(f"{'C':>4} {'msg/s':>9} {'server ms/msg':>14} {'client CPU':>11}")
            for c in levels:
                rate = statistics.median(r[0] for r in results[c])
                cpu = statistics.median(r[1] for r in results[c])
                share = statistics.median(r[2] for r in results[c])
                print(f"{c:>4} {rate:>9.1f} {cpu:>14.2f} {share:>10.0%}")
            print("Postfix side-by-side: not run (needs SASL wiring to the same accounts)")
        finally:
            proc.terminate()
            proc.wait(30)
            log.close()


if __name__ == "__main__":
    main()
