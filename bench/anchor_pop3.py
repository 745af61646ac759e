"""POP3 side by side with Dovecot: same Maildirs, same clients, alternating rounds, ratios.

    .venv/bin/python bench/anchor_pop3.py            # every cell, 3 rounds
    .venv/bin/python bench/anchor_pop3.py --quick    # smaller counts, 1 round
    .venv/bin/python bench/anchor_pop3.py --baseline-tree /tmp/main-tree   # add main's code
    .venv/bin/python bench/anchor_pop3.py --only login --rounds 5
    .venv/bin/python bench/anchor_pop3.py --workers 2   # both cores, as an operator would

Dovecot (``dovecot-pop3d``, installed with apt-get when missing and run as root; otherwise
the script says how and runs Mailhost alone) runs as a private instance in a scratch
directory: its own base_dir, a config passed with ``-c``, its own POP3 port on 127.0.0.1, a
passwd-file with the same ARGON2ID hash as Mailhost's database (equal hash cost), and
``mail_location = maildir:`` on the very Maildir the Mailhost worker serves (Dovecot's index
and control files go to the scratch directory, so the Maildir layout is ours).  Before every
run of every server the Maildirs are emptied and filled again identically.

Cells: 4 KiB x N RETR+DELE with a raw client (one command at a time), pipelined, ``poplib``
and ``mpop``, 1 and 4 users; the same with files named as other MTAs write them (no
``S=``/``W=``); 1 MiB x M raw/pipelined, 4 users; login -> STAT at 1,000 / 10,000 / 50,000
messages, first and second login; worker memory after three sessions on the biggest mailbox
(peak and retained).  Every row prints medians, min-max, server CPU per message (all
processes of each server, from /proc) and the ratio Mailhost / Dovecot (>1 is better for
rates, <1 for times).
"""

from __future__ import annotations

import argparse
import os
import poplib
import pwd
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import pop3_download as pd  # noqa: E402

from app.maildir import MaildirStore  # noqa: E402
from app.passwords import hash_password  # noqa: E402

Loader = Callable[[Path, list[str], int, int, bool], None]


# --------------------------------------------------------------------------------- Dovecot
def ensure_dovecot() -> str | None:
    """Path of the dovecot binary, installing dovecot-pop3d when missing and root."""
    found = shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
    )
    if found and Path("/usr/lib/dovecot/pop3").exists():
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "dovecot-pop3d"],
            check=False,
            env=env,
        )
        return shutil.which("dovecot") or "/usr/sbin/dovecot"
    print(
        "Dovecot not installed: run `sudo apt-get install dovecot-pop3d` for the side-by-side"
        " figures; running Mailhost alone.",
        file=sys.stderr,
    )
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dovecot:
    """A private Dovecot POP3 instance on the bench's Maildir root."""

    def __init__(self, binary: str, scratch: Path, maildir_root: Path, addresses: list[str]):
        self.binary = binary
        self.maildir_root = maildir_root
        self.dir = scratch / "dovecot"
        self.dir.mkdir()
        scratch.chmod(0o755)  # Dovecot's auth processes run as the "dovecot" user
        self.port = _free_port()
        self.conf = self.dir / "dovecot.conf"
        # Dovecot refuses UID 0 for mail users: it reads the Maildir as its own "dovecot"
        # user, which gets the files after every fill (fill_maildirs(owner=...)).
        user = pwd.getpwnam("dovecot")
        self.owner = (user.pw_uid, user.pw_gid)
        hashed = hash_password(pd.PASSWORD)  # passlib's $argon2id$... = Dovecot's ARGON2ID
        lines = []
        for address in addresses:
            local, _, domain = address.partition("@")
            home = maildir_root / domain / local
            lines.append(f"{address}:{{ARGON2ID}}{hashed}:{user.pw_uid}:{user.pw_gid}::{home}::")
        (self.dir / "passwd").write_text("\n".join(lines) + "\n")
        (self.dir / "passwd").chmod(0o644)
        self.conf.write_text(
            f"""
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
auth_verbose = yes
first_valid_uid = 0
first_valid_gid = 0
default_internal_user = dovecot
default_login_user = dovenull
mail_location = maildir:~:INDEX={self.dir}/index/%u:CONTROL={self.dir}/control/%u
pop3_uidl_format = %f
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.port}
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=ARGON2ID {self.dir}/passwd
}}
userdb {{
  driver = passwd-file
  args = {self.dir}/passwd
}}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-F", "-c", str(self.conf)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"+OK"):
                        return
            except OSError:
                time.sleep(0.1)
        log = self.dir / "dovecot.log"
        detail = log.read_text()[-2000:] if log.exists() else "(no log)"
        raise SystemExit(f"Dovecot did not start:\n{detail}")

    def forget_indexes(self) -> None:
        """Dovecot's caches of a Maildir that was just filled again; give it the files."""
        for sub in ("index", "control"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)
            (self.dir / sub).mkdir()
            os.chown(self.dir / sub, *self.owner)
        subprocess.run(
            ["chown", "-R", f"{self.owner[0]}:{self.owner[1]}", str(self.maildir_root)], check=True
        )

    def pids(self) -> list[int]:
        assert self.proc is not None
        return _descendants(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)


def _descendants(pid: int) -> list[int]:
    out = [pid]
    try:
        children = pd._children(pid)
    except FileNotFoundError:  # exited meanwhile
        return out
    for child in children:
        out += _descendants(child)
    return out


def cpu_all(pids_of: Callable[[], list[int]]) -> float:
    """CPU seconds of a server's processes, including those that came and went (children
    reaped by the master count in its cutime/cstime)."""
    total = 0
    for pid in pids_of():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------- Maildirs
def fill_maildirs(root: Path, addresses: list[str], count: int, size: int, foreign: bool) -> None:
    """Empty and fill the users' Maildirs identically: Mailhost's names (through the store,
    so its index is kept as the MX keeps it) or Postfix-style names without sizes."""
    store = MaildirStore(root, hostname="bench.test", fsync=False)
    for address in addresses:
        ref = pd.ref_of(address)
        for attempt in range(20):  # a server may still be closing the previous session
            try:
                store.remove_mailbox(ref)
                break
            except Exception:
                if attempt == 19:
                    raise
                time.sleep(0.1)
        if not foreign:
            pd.fill(store, address, count, size)
            continue
        path = store.ensure(ref)
        base = 1_700_000_000
        for i in range(count):
            name = f"{base + i}.V801I{i:x}M{i % 1_000_000}.postfix.example"
            (path / "new" / name).write_bytes(pd.make_message(size, i))


# --------------------------------------------------------------------------------- clients
def run_raw(port: int, addresses: list[str], pipelined: bool) -> float:
    """Seconds from the first RETR to the last QUIT reply (logins excluded, as in
    bench/pop3_download.py; the poplib and mpop cells include them)."""
    clients = [pd.Client(port) for _ in addresses]
    counts = [c.login(a) for c, a in zip(clients, addresses, strict=True)]

    def one(c: pd.Client, n: int) -> None:
        if pipelined:
            c.download_pipelined(n)
        else:
            c.download_sequential(n)
        c.quit()

    threads = [
        threading.Thread(target=one, args=(c, n)) for c, n in zip(clients, counts, strict=True)
    ]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - began


def run_poplib(port: int, addresses: list[str]) -> int:
    total = [0]

    def one(address: str) -> None:
        pop = poplib.POP3("127.0.0.1", port, timeout=pd.TIMEOUT)
        pop.user(address)
        pop.pass_(pd.PASSWORD)
        count = pop.stat()[0]
        for n in range(1, count + 1):
            pop.retr(n)
            pop.dele(n)
        pop.quit()
        total[0] += count

    threads = [threading.Thread(target=one, args=(a,)) for a in addresses]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return total[0]


def run_mpop(port: int, addresses: list[str], scratch: Path) -> int:
    procs = []
    for n, address in enumerate(addresses):
        conf = scratch / f"mpoprc.{n}"
        conf.write_text(
            f"account default\nhost 127.0.0.1\nport {port}\ntls off\nauth user\n"
            f"user {address}\npassword {pd.PASSWORD}\nkeep off\nonly_new off\n"
            f"uidls_file {scratch}/uidls.{n}\ndelivery mbox {scratch}/mbox.{n}\n"
        )
        conf.chmod(0o600)
        procs.append(subprocess.Popen(["mpop", "-q", "-C", str(conf)]))
    for p in procs:
        if p.wait(600) != 0:
            raise RuntimeError("mpop failed")
    for n in range(len(addresses)):
        (scratch / f"mbox.{n}").unlink(missing_ok=True)
    return -1  # counted by the caller


STAT_REPLIES: dict[tuple[str, str], set[bytes]] = {}


def login_stat_seconds(port: int, address: str, key: tuple[str, str]) -> float:
    began = time.perf_counter()
    client = pd.Client(port)
    client.command(f"USER {address}\r\n".encode())
    client.command(f"PASS {pd.PASSWORD}\r\n".encode())
    stat = client.command(b"STAT\r\n")
    took = time.perf_counter() - began
    STAT_REPLIES.setdefault(key, set()).add(stat.strip())
    client.quit()  # waits for the reply: the session is over before the next fill
    return took


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------------- table
def summary(values: list[float]) -> str:
    return f"{statistics.median(values):>9.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, one round")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (3)")
    parser.add_argument("--only", default=None, help="cells whose label contains this")
    parser.add_argument("--baseline-tree", default=None, help="also run this Mailhost tree")
    parser.add_argument(
        "--login-sizes", default=None, help="comma-separated mailbox sizes for the login cells"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="Mailhost worker processes on one port (1)"
    )
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    small, large = (200, 20) if args.quick else (1000, 100)
    login_sizes = [1000, 10_000] if args.quick else [1000, 10_000, 50_000]
    if args.login_sizes:
        login_sizes = [int(n) for n in args.login_sizes.split(",")]
    dovecot_bin = ensure_dovecot()
    with tempfile.TemporaryDirectory(prefix="pop3-anchor-") as tmp:
        scratch = Path(tmp)
        settings, addresses = pd.setup(scratch, f"sqlite:///{scratch / 'bench.db'}", users=4)
        root = settings.maildir_root
        servers: dict[str, tuple[int, Callable[[], list[int]], Callable[[], None]]] = {}
        procs: list[subprocess.Popen[bytes]] = []
        trees = [("mailhost", pd.REPO)]
        if args.baseline_tree:
            trees.append(("main", Path(args.baseline_tree).resolve()))
        for label, tree in trees:  # noqa: B007
            saved = pd.REPO
            pd.REPO = tree  # PYTHONPATH of the worker
            port, wprocs, pids = pd.start_workers(settings, args.workers, tree, None)
            pd.REPO = saved
            procs += wprocs
            servers[label] = (port, (lambda p=list(pids): p), lambda: None)
        dovecot = None
        if dovecot_bin:
            dovecot = Dovecot(dovecot_bin, scratch, root, addresses)
            dovecot.start()
            servers["dovecot"] = (dovecot.port, dovecot.pids, dovecot.forget_indexes)
        order = list(servers)
        print(
            f"POP3 anchor: {', '.join(order)}; {rounds} round(s); {args.workers} Mailhost"
            f" worker(s); load {os.getloadavg()}"
        )
        try:
            cells = []
            for users in (1, 4):
                for client in ("raw", "pipelined", "poplib", "mpop"):
                    cells.append(
                        (
                            f"4 KiB x {small} {client}, {users} user(s)",
                            4096,
                            small,
                            users,
                            client,
                            False,
                        )
                    )
                for client in ("raw", "poplib"):
                    cells.append(
                        (
                            f"4 KiB x {small} {client}, foreign names, {users} user(s)",
                            4096,
                            small,
                            users,
                            client,
                            True,
                        )
                    )
            for client in ("raw", "pipelined"):
                cells.append(
                    (f"1 MiB x {large} {client}, 4 users", 1 << 20, large, 4, client, False)
                )
            if args.only:
                cells = [c for c in cells if args.only in c[0]]
            print(
                f"{'cell':<44} "
                + " ".join(f"{s + ' msg/s':>24} {'us/msg':>7}" for s in order)
                + "  ratio"
            )
            for label, size, count, users, client, foreign in cells:
                rates: dict[str, list[float]] = {s: [] for s in order}
                cpus: dict[str, list[float]] = {s: [] for s in order}
                for r in range(rounds):
                    for name in order if r % 2 == 0 else order[::-1]:
                        port, pids_of, reset = servers[name]
                        fill_maildirs(root, addresses[:users], count, size, foreign)
                        reset()
                        before = cpu_all(pids_of)
                        began = time.perf_counter()
                        if client in ("raw", "pipelined"):
                            took = run_raw(port, addresses[:users], client == "pipelined")
                        else:
                            if client == "poplib":
                                run_poplib(port, addresses[:users])
                            else:
                                run_mpop(port, addresses[:users], scratch)
                            took = time.perf_counter() - began
                        n = count * users
                        rates[name].append(n / took)
                        cpus[name].append((cpu_all(pids_of) - before) / n * 1e6)
                ratio = ""
                if "dovecot" in rates:
                    mine, theirs = rates["mailhost"], rates["dovecot"]
                    ratio = f"{statistics.median(mine) / statistics.median(theirs):.2f}"
                print(
                    f"{label:<44} "
                    + " ".join(
                        f"{summary(rates[s]):>24} {statistics.median(cpus[s]):>7.0f}" for s in order
                    )
                    + f"  {ratio}",
                    flush=True,
                )
            if not args.only or "login" in args.only:
                print(
                    "login -> STAT (ms, one argon2 check included): first login after the fill"
                    " / second login"
                )
                for foreign in (False, True):
                    for count in login_sizes:
                        if foreign and count != login_sizes[-1]:
                            continue
                        times: dict[str, list[list[float]]] = {s: [[], []] for s in order}
                        for r in range(rounds):
                            for name in order if r % 2 == 0 else order[::-1]:
                                port, _, reset = servers[name]
                                fill_maildirs(root, addresses[:1], count, 4096, foreign)
                                reset()
                                for k in range(2):
                                    times[name][k].append(
                                        login_stat_seconds(port, addresses[0], (name, str(count)))
                                        * 1e3
                                    )
                        label = f"login {count}{' foreign names' if foreign else ''}"
                        cols = " ".join(
                            f"{s}: {summary(times[s][0])} / {summary(times[s][1])}" for s in order
                        )
                        ratio = ""
                        if "dovecot" in times:
                            ratio = "  ratio 1st {:.2f} 2nd {:.2f}".format(
                                *(
                                    statistics.median(times["mailhost"][k])
                                    / statistics.median(times["dovecot"][k])
                                    for k in range(2)
                                )
                            )
                        print(f"{label:<28} {cols}{ratio}", flush=True)
                        stats = {s: STAT_REPLIES.pop((s, str(count)), set()) for s in order}
                        print(f"  STAT replies: {stats}")
            if not args.only or "memory" in args.only:
                memory(servers, order, root, addresses[0], login_sizes[-1], dovecot)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(30)
            if dovecot is not None:
                dovecot.stop()
                if sys.exc_info()[0] is not None:
                    print((dovecot.dir / "dovecot.log").read_text()[-3000:], file=sys.stderr)


def memory(servers, order, root: Path, address: str, count: int, dovecot: Dovecot | None) -> None:  # type: ignore[no-untyped-def]
    """Three sessions (login, LIST, UIDL, QUIT) on one big mailbox: RSS of the worker."""
    fill_maildirs(root, [address], count, 4096, False)
    print(f"memory, three sessions on {count} messages (MB): peak / retained after logout")
    for name in order:
        port, pids_of, reset = servers[name]
        reset()
        peak = retained = 0.0
        if name == "dovecot":
            # One pop3 process per session: its peak while the session is open; gone at logout.
            for _ in range(3):
                client = pd.Client(port)
                client.login(address)
                client.sock.sendall(b"LIST\r\n")
                client.line()
                client.multiline()
                client.sock.sendall(b"UIDL\r\n")
                client.line()
                client.multiline()
                workers = [
                    p for p in pids_of() if Path(f"/proc/{p}/comm").read_text().strip() == "pop3"
                ]
                peak = max([peak] + [rss_kib(p, "VmHWM") / 1024 for p in workers])
                client.quit()
            time.sleep(0.2)
            workers = [
                p for p in pids_of() if Path(f"/proc/{p}/comm").read_text().strip() == "pop3"
            ]
            retained = sum(rss_kib(p, "VmRSS") for p in workers) / 1024
        else:
            # With several workers a session lands on any of them: peak of the biggest,
            # retained summed over all.
            pids = pids_of()
            start = sum(rss_kib(pid, "VmRSS") for pid in pids) / 1024
            for pid in pids:
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM
            for _ in range(3):
                client = pd.Client(port)
                client.login(address)
                client.sock.sendall(b"LIST\r\n")
                client.line()
                client.multiline()
                client.sock.sendall(b"UIDL\r\n")
                client.line()
                client.multiline()
                client.quit()
            time.sleep(0.2)
            peak = max(rss_kib(pid, "VmHWM") for pid in pids) / 1024
            retained = sum(rss_kib(pid, "VmRSS") for pid in pids) / 1024
            print(f"  {name}: worker RSS before {start:.1f}")
        print(f"  {name}: peak {peak:.1f} / retained {retained:.1f}", flush=True)


if __name__ == "__main__":
    main()
