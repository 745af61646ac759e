"""Private rspamd and clamd for the tests: own config directories, own ports on 127.0.0.1.

rspamd runs Debian's stock rules (``$CONFDIR`` is /etc/rspamd) with our own top-level config:
one normal worker on a free loopback port, DNS from the test DNS server (tests/dnsserver.py),
and the modules that would reach the Internet (fuzzy_check, rbl's and whitelist's remote maps,
phishing feeds, the freemail maps, url_redirector) disabled. Its compiled Hyperscan regexps
are kept in a cache directory between runs (a cold start compiles for about 20 s).

clamd gets a signature database the test writes: one ``.ndb`` body signature for the EICAR
test string (the signature downloads cannot run here). Neither uses the system services the
Debian packages install; those may be stopped or absent.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
EICAR_SIGNATURE = "Mailhost.Test.EICAR"
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
START_DEADLINE = 180.0  # a cold rspamd compiles its regexps first
# Modules whose defaults fetch maps or query servers on the Internet.
_OFFLINE_MODULES = ("fuzzy_check", "rbl", "whitelist", "phishing", "multimap", "url_redirector")


class ScannerMissing(RuntimeError):
    """The Debian package is not installed (a skip locally, a failure under CI=true)."""


def free_port() -> int:
    # The daemons bind the port themselves, so it is picked here and handed over (a small
    # race with other processes, unlike port 0 read back, which these daemons do not offer).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(check: object, what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {_tail(log)}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)  # polling a daemon's start-up, with a deadline
    process.kill()
    raise RuntimeError(f"{what} did not answer within {START_DEADLINE} s: {_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:]
    except OSError:
        return "(no log)"


class Rspamd:
    def __init__(self, root: Path, *, dns_port: int, cache_dir: Path) -> None:
        binary = shutil.which("rspamd")
        if binary is None:
            raise ScannerMissing("rspamd is not installed (apt-get install rspamd)")
        self.root = root
        self.port = free_port()
        local = root / "local"
        for sub in ("override.d", "local.d"):
            (local / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("db", "run", "log"):
            (root / sub).mkdir(exist_ok=True)
        cache_dir.mkdir(parents=True, exist_ok=True)
        for module in _OFFLINE_MODULES:
            (local / "override.d" / f"{module}.conf").write_text("enabled = false;\n")
        # Debian's options.inc without its resolver section (ours points at the test DNS
        # server) and with loopback checked like any client: the tests connect from 127.0.0.1,
        # which rspamd's SPF/DMARC modules (and the DKIM check) would otherwise skip as local.
        stock = Path("/etc/rspamd/options.inc").read_text()
        stock = re.sub(r"(?ms)^dns\s*\{.*?^\}", "", stock)
        stock = re.sub(r"(?m)^(local_addrs|hs_cache_dir)\s*=.*$", "", stock)
        (root / "options.inc").write_text(
            stock
            + f'hs_cache_dir = "{cache_dir}/";\n'
            + f'dns {{ nameserver = ["127.0.0.1:{dns_port}"]; timeout = 1s; retransmits = 1; }}\n'
            + "local_addrs = [];\ncheck_local = true;\n"
        )
        (local / "local.d" / "dkim.conf").write_text("check_local = true;\n")
        (root / "rspamd.conf").write_text(
            '.include "$CONFDIR/common.conf"\n'
            "options {\n"
            '    pidfile = "$RUNDIR/rspamd.pid";\n'
            f'    .include "{root / "options.inc"}"\n'
            "}\n"
            'logging { type = "file"; filename = "$LOGDIR/rspamd.log"; level = "info"; }\n'
            f'worker "normal" {{ bind_socket = "127.0.0.1:{self.port}"; count = 1;\n'
            '    .include "$CONFDIR/worker-normal.inc" }\n'
        )
        args = [binary, "-f", "-c", str(root / "rspamd.conf")]
        if os.geteuid() == 0:
            args.append("-i")  # run the workers as root (test machines and CI containers)
        for name, sub in (
            ("LOCAL_CONFDIR", "local"),
            ("DBDIR", "db"),
            ("RUNDIR", "run"),
            ("LOGDIR", "log"),
        ):
            args.append(f"--var={name}={root / sub}")
        self.log = root / "log" / "rspamd.log"
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root
        )
        _wait(self.ping, "rspamd", self.process, self.log)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ping(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.address}/ping", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        _stop(self.process)


class Clamd:
    def __init__(self, root: Path) -> None:
        binary = shutil.which("clamd") or (
            "/usr/sbin/clamd" if Path("/usr/sbin/clamd").exists() else None
        )
        if binary is None:
            raise ScannerMissing("clamd is not installed (apt-get install clamav-daemon)")
        self.port = free_port()
        database = root / "db"
        database.mkdir(parents=True, exist_ok=True)
        (database / "mailhost-test.ndb").write_text(f"{EICAR_SIGNATURE}:0:*:{EICAR.hex()}\n")
        self.log = root / "clamd.log"
        (root / "clamd.conf").write_text(
            "Foreground yes\n"
            f"TCPSocket {self.port}\n"
            "TCPAddr 127.0.0.1\n"
            f"DatabaseDirectory {database}\n"
            f"LogFile {self.log}\n"
            f"PidFile {root / 'clamd.pid'}\n"
            f"TemporaryDirectory {root}\n"
            "StreamMaxLength 64M\n"
            "Bytecode no\n"
            "ScanMail yes\n"
        )
        self.process = subprocess.Popen(
            [binary, "-c", str(root / "clamd.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(self.ping, "clamd", self.process, self.log)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
                sock.sendall(b"zPING\0")
                return sock.recv(16) == b"PONG\0"
        except OSError:
            return False

    def stop(self) -> None:
        _stop(self.process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mailhost-tests" / "rspamd-hyperscan"
