"""Private rspamd and clamd for the tests: own config directories, own ports on 127.0.0.1.

rspamd runs Debian's stock rules (``$CONFDIR`` is /etc/rspamd) with our own top-level config:
one normal worker on a free loopback port, DNS from the test DNS server (tests/dnsserver.py),
and the modules that would reach the Internet (fuzzy_check, rbl's and whitelist's remote maps,
phishing feeds, the freemail maps, url_redirector) disabled. Its compiled Hyperscan regexps
are kept in a cache directory between runs (a cold start compiles for about 20 s).

Greylisting (rspamd's greylist module) keeps its records in the Redis on 127.0.0.1:6379 when
one answers there at start-up: under a key prefix unique to this rspamd instance (parallel runs
never share records), with a greylisting timeout of ``GREYLIST_TIMEOUT`` seconds; ``stop``
deletes that prefix's keys and no others. No other rspamd module is given a Redis. A test rule,
``MAILHOST_TEST_SUSPECT``, scores ``SUSPECT_SCORE`` for a message carrying ``SUSPECT_HEADER``:
above rspamd's greylist action threshold (4) and below our default tag threshold (6), the
kind of message rspamd greylists (its module never greylists mail scoring "no action").

clamd gets a signature database the test writes: one ``.ndb`` body signature for the EICAR
test string (the signature downloads cannot run here). Neither uses the system services the
Debian packages install; those may be stopped or absent.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
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
GREYLIST_TIMEOUT = 3.0  # seconds before a greylisted triplet may retry
SUSPECT_HEADER = "X-Mailhost-Test: suspect"
SUSPECT_SCORE = 5.0
REDIS = ("127.0.0.1", 6379)
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


def redis_command(*args: str, address: tuple[str, int] = REDIS) -> object:
    """One command to Redis in RESP (no client library: the tests need PING, SCAN and DEL).
    Raises OSError when no Redis answers."""
    request = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(arg.encode())}\r\n".encode() + arg.encode() + b"\r\n" for arg in args
    )
    with socket.create_connection(address, timeout=5) as sock:
        sock.sendall(request)
        reader = sock.makefile("rb")
        return _resp(reader)


def _resp(reader: object) -> object:
    line = reader.readline()  # type: ignore[attr-defined]
    if not line:
        raise OSError("redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise OSError(f"redis: {rest.decode()}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = reader.read(size + 2)  # type: ignore[attr-defined]
        return data[:-2].decode()
    if kind == b"*":
        return [_resp(reader) for _ in range(int(rest))]
    raise OSError(f"redis answered {line!r}")


def redis_up() -> bool:
    try:
        return redis_command("PING") == "PONG"
    except OSError:
        return False


def redis_keys(prefix: str) -> list[str]:
    """Every key under ``prefix`` (SCAN, never KEYS: the Redis may be shared)."""
    keys: list[str] = []
    cursor = "0"
    while True:
        answer = redis_command("SCAN", cursor, "MATCH", prefix + "*", "COUNT", "1000")
        assert isinstance(answer, list)
        cursor, found = answer
        keys += found
        if cursor == "0":
            return keys


def redis_forget(prefix: str) -> None:
    """Delete the keys under ``prefix`` only."""
    keys = redis_keys(prefix)
    for start in range(0, len(keys), 500):
        redis_command("DEL", *keys[start : start + 500])


class Rspamd:
    def __init__(
        self,
        root: Path,
        *,
        dns_port: int,
        cache_dir: Path,
        local_d: dict[str, str] | None = None,
    ) -> None:
        """``local_d``: more ``local.d/`` files (name -> content), e.g. bench/scan_antivirus.py's
        antivirus module pointed at a clamd."""
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
        # Greylisting with a Redis of its own key prefix (see the module docstring).
        self.greylist_prefix: str | None = None
        if redis_up():
            self.greylist_prefix = f"mhtest{os.getpid()}{secrets.token_hex(4)}"
            (local / "local.d" / "greylist.conf").write_text(
                f'servers = "{REDIS[0]}:{REDIS[1]}";\n'
                f'key_prefix = "{self.greylist_prefix}";\n'
                f"timeout = {GREYLIST_TIMEOUT}s;\nexpire = 1h;\n"
            )
        else:
            (local / "override.d" / "greylist.conf").write_text("enabled = false;\n")
        for file_name, content in (local_d or {}).items():
            (local / "local.d" / file_name).write_text(content)
        name, _, value = SUSPECT_HEADER.partition(": ")
        (local / "rspamd.local.lua").write_text(
            "rspamd_config.MAILHOST_TEST_SUSPECT = {\n"
            "  callback = function(task)\n"
            f"    return task:get_header('{name}') == '{value}'\n"
            "  end,\n"
            f"  score = {SUSPECT_SCORE},\n"
            "  description = 'Mailhost tests: a message made to look suspect',\n"
            "}\n"
        )
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
        if self.greylist_prefix is not None:
            # Redis gone away: it keeps nothing on disk here, and the keys expire in an hour.
            with contextlib.suppress(OSError):
                redis_forget(self.greylist_prefix)


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
