"""The benchmarks' anchors: a private Postfix instance in a scratch directory (installed with
apt-get when missing), started and stopped here, listening on 127.0.0.1 only.

The instance has its own ``config_directory``, ``queue_directory`` and ``data_directory``
under the scratch directory and never touches the system's ``/etc/postfix`` beyond what the
Debian package installs. Mail for the virtual mailbox domains given goes into Maildirs under
``<scratch>/mail/<domain>/<local part>/`` (the layout Mailhost's own store uses), written by
Postfix's ``virtual(8)`` as the ``nobody`` user. Recipients not in the map are refused at RCPT
(``smtpd_reject_unlisted_recipient``, the default) and nothing is relayed
(``smtpd_relay_restrictions = reject_unauth_destination``, no ``permit_mynetworks``).

Usage from a bench::

    postfix = PostfixAnchor.create(scratch, {"example.com": ["alice", "bob"]})
    if postfix is not None:      # None: not installed and not installable (printed why)
        postfix.start(); ...; postfix.stop()
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
POSTFIX = "/usr/sbin/postfix"
SMTP_SOURCE = "/usr/sbin/smtp-source"  # Debian ships it in the postfix package itself


def ensure_package(package: str, probe: str) -> bool:
    """True if ``probe`` exists, installing ``package`` with apt-get first when we are root;
    otherwise print how to install it and return False (the bench runs without it)."""
    if os.path.exists(probe):
        return True
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(f"note: {package} is not installed; run: sudo apt-get install {package}")
        return False
    print(f"installing {package} with apt-get ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if package == "postfix":
        # No system instance configured: we only want the programs.
        subprocess.run(
            ["debconf-set-selections"],
            input=b"postfix postfix/main_mailer_type select No configuration\n",
            check=False,
        )
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
    result = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], env=env
    )
    if result.returncode != 0 or not os.path.exists(probe):
        print(f"note: could not install {package}; the bench runs without it")
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_cpu_seconds(root_pid: int) -> float:
    """CPU seconds of a process and all its live descendants, plus what its reaped children
    used (cutime/cstime): the whole server, also when it forks and reaps workers."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        stats[pid] = fields
        children.setdefault(int(fields[1]), []).append(pid)
    total = 0
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        fields = stats.get(pid)
        if fields is None:
            continue
        # proc(5) fields 14-17: utime stime cutime cstime (index 11.. after the name).
        total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
        todo.extend(children.get(pid, []))
    return total / CLOCK_TICKS


_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixAnchor:
    """A private Postfix instance: ``start()``, ``port``, ``cpu_seconds()``, ``stop()``."""

    def __init__(self, scratch: Path, port: int) -> None:
        self.scratch = scratch
        self.port = port
        self.config = scratch / "etc"
        self.queue = scratch / "queue"
        self.data = scratch / "data"
        self.mail = scratch / "mail"
        self.log = scratch / "maillog"

    @classmethod
    def create(
        cls, scratch: Path, mailboxes: Mapping[str, Iterable[str]], *, port: int | None = None
    ) -> PostfixAnchor | None:
        """Write the configuration and the maps for ``mailboxes`` (domain -> local parts);
        None when Postfix is not available."""
        if not ensure_package("postfix", POSTFIX) or not os.path.exists(SMTP_SOURCE):
            return None
        if os.geteuid() != 0:
            print("note: a private Postfix instance needs root (it drops to its own users)")
            return None
        anchor = cls(scratch, port or free_port())
        anchor._configure(mailboxes)
        return anchor

    def _configure(self, mailboxes: Mapping[str, Iterable[str]]) -> None:
        nobody = pwd.getpwnam("nobody")
        # Postfix's daemons run as postfix / nobody: they must reach the scratch directory
        # (tempfile makes its directories 0700).
        self.scratch.mkdir(parents=True, exist_ok=True)
        for folder in (self.scratch, *self.scratch.parents):
            if folder == Path("/"):
                break
            mode = folder.stat().st_mode & 0o777
            if mode & 0o011 != 0o011:
                os.chmod(folder, mode | 0o011)
        for path in (self.config, self.queue, self.data, self.mail):
            path.mkdir(parents=True, exist_ok=True)
        os.chown(self.mail, nobody.pw_uid, nobody.pw_gid)
        shutil.chown(self.data, "postfix", "postfix")
        domains = self.config / "vdomains"
        boxes = self.config / "vmailboxes"
        with open(domains, "w") as dfh, open(boxes, "w") as bfh:
            for domain, locals_ in mailboxes.items():
                dfh.write(f"{domain} OK\n")
                for local in locals_:
                    bfh.write(f"{local}@{domain} {domain}/{local}/\n")
        main = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue,
            "data_directory": self.data,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "mx.anchor.example",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.1/32",
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_recipient_restrictions": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "virtual_mailbox_domains": f"hash:{domains}",
            "virtual_mailbox_maps": f"hash:{boxes}",
            "virtual_mailbox_base": self.mail,
            "virtual_uid_maps": f"static:{nobody.pw_uid}",
            "virtual_gid_maps": f"static:{nobody.pw_gid}",
            "virtual_minimum_uid": "1",
            "virtual_destination_concurrency_limit": "20",
            "message_size_limit": str(50 * 1024 * 1024),
            "virtual_mailbox_limit": "0",
            # The bench sends many connections from one address: no anvil limits.
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_message_rate_limit": "0",
            "default_process_limit": "100",
            "biff": "no",
            "maillog_file_prefixes": self.scratch,
            "maillog_file": self.log,
            "smtputf8_enable": "no",
        }
        with open(self.config / "main.cf", "w") as fh:
            for key, value in main.items():
                fh.write(f"{key} = {value}\n")
        (self.config / "master.cf").write_text(_MASTER_CF.format(port=self.port))
        for table in (domains, boxes):
            subprocess.run(["postmap", "-c", str(self.config), f"hash:{table}"], check=True)

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.config), *args], capture_output=True, text=True
        )

    def start(self) -> None:
        result = self._postfix("start")
        if result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise SystemExit(f"postfix start failed: {result.stdout}{result.stderr}{log}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                    if sock.recv(512).startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"postfix did not greet on 127.0.0.1:{self.port}; see {self.log}")

    def master_pid(self) -> int:
        return int((self.queue / "pid" / "master.pid").read_text().split()[0])

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.master_pid())

    def queue_empty(self) -> bool:
        for sub in ("maildrop", "incoming", "active", "deferred"):
            folder = self.queue / sub
            for _, _, files in os.walk(folder):
                if files:
                    return False
        return True

    def wait_drained(self, timeout: float = 120.0) -> bool:
        """Wait until every accepted message is delivered (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queue_empty():
                return True
            time.sleep(0.05)
        return False

    def deferred(self) -> int:
        return sum(len(files) for _, _, files in os.walk(self.queue / "deferred"))

    def stop(self) -> None:
        try:
            pid = self.master_pid()
        except (OSError, ValueError):
            return
        self._postfix("stop")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            time.sleep(0.1)
