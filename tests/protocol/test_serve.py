"""``mailhost serve`` as a real process: migrate, first operator, all three edges, clean drain.

Runs on a fresh SQLite file, and also on a fresh PostgreSQL database when
``MAILHOST_TEST_DATABASE_URL`` is set (a database of its own, so ``serve``'s migrations run
from empty exactly as in production).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import poplib
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from app.config import Settings
from app.db import make_engine, make_session_factory
from app.readiness import parse_ready_line
from app.services import accounts
from mailhost.cli import main
from tests.conftest import in_ci, pg_url

START_TIMEOUT = 30.0
IO_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database nobody has migrated yet."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'var' / 'mailhost.db'}"
        return
    base = pg_url()
    if base is None:
        if in_ci():
            pytest.fail("CI must run this against PostgreSQL: set MAILHOST_TEST_DATABASE_URL")
        pytest.skip("PostgreSQL variant: set MAILHOST_TEST_DATABASE_URL")
    import psycopg

    name = f"mh_serve_{uuid.uuid4().hex[:10]}"
    url = make_url(base)
    admin = url.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    smtp_port: int
    pop3_port: int
    web_port: int

    def out(self) -> str:
        return self.stdout.read_text()

    def err(self) -> str:
        return self.stderr.read_text()

    def wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        pending = {self.smtp_port, self.pop3_port, self.web_port}
        while pending:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.err()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not listening within {START_TIMEOUT}s:\n{self.err()}")
            for port in list(pending):
                with contextlib.suppress(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    pending.discard(port)
            time.sleep(0.1)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


class Server:
    """Starts ``python -m mailhost serve`` with its own ports, database and Maildir."""

    def __init__(self, tmp_path: Path, database_url: str) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.maildir = tmp_path / "mail"
        self.running: list[Served] = []

    def env(self, **ports: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOST_")}
        env.update(
            MAILHOST_DATABASE_URL=self.database_url,
            MAILHOST_MAILDIR_ROOT=str(self.maildir),
            MAILHOST_HOSTNAME="mx.test.example",
            MAILHOST_LOG_LEVEL="INFO",
            **{f"MAILHOST_{k.upper()}": str(v) for k, v in ports.items()},
        )
        return env

    def start(self, run: int, **env_extra: str) -> Served:
        ports = {"smtp_port": free_port(), "pop3_port": free_port(), "web_port": free_port()}
        # Submission's ports too: its defaults (2587/2465) may be taken on a shared machine.
        self.submission_ports = {"submission_port": free_port(), "submissions_port": free_port()}
        stdout = self.tmp_path / f"serve{run}.out"
        stderr = self.tmp_path / f"serve{run}.err"
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mailhost", "serve"],
                stdout=out,
                stderr=err,
                cwd=self.tmp_path,
                env={**self.env(**ports, **self.submission_ports), **env_extra},
            )
        served = Served(proc, stdout, stderr, **ports)
        self.running.append(served)
        served.wait_listening()
        return served

    def cli(self, *argv: str, stdin: str = "") -> str:
        out, err = io.StringIO(), io.StringIO()
        status = main(
            ["--database-url", self.database_url, "--maildir-root", str(self.maildir), *argv],
            stdin=io.StringIO(stdin),
            stdout=out,
            stderr=err,
        )
        assert status == 0, err.getvalue()
        return out.getvalue()

    def close(self) -> None:
        for served in self.running:
            if served.proc.poll() is None:
                served.proc.kill()
                served.proc.wait(timeout=10)


@pytest.fixture
def server(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    monkeypatch.chdir(tmp_path)
    s = Server(tmp_path, database_url)
    yield s
    s.close()


@pytest.fixture
def sqlite_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """For process-management tests, where the database backend plays no part."""
    monkeypatch.chdir(tmp_path)
    s = Server(tmp_path, f"sqlite:///{tmp_path / 'var' / 'mailhost.db'}")
    yield s
    s.close()


def _compose_healthchecks_pass(served: Served) -> None:
    """The health checks of docker-compose.yml, run against this server (ports swapped in),
    succeed; pointed at a port nobody listens on, they fail."""
    import yaml

    compose = yaml.safe_load((Path(__file__).parents[2] / "docker-compose.yml").read_text())
    ours = {"smtp": served.smtp_port, "pop3": served.pop3_port, "web": served.web_port}
    for name, default in (("smtp", 2525), ("pop3", 1110), ("web", 8000)):
        code = compose["services"][name]["healthcheck"]["test"][3]
        assert str(default) in code
        for port, should_pass in ((ours[name], True), (free_port(), False)):
            probe = subprocess.run(
                [sys.executable, "-c", code.replace(str(default), str(port))],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert (probe.returncode == 0) is should_pass, (name, port, probe.stderr)


def _password_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "with password:" in line]


def test_serve_starts_everything_prints_the_first_password_once_and_stops_cleanly(
    server: Server,
) -> None:
    first = server.start(1)
    with urllib.request.urlopen(  # noqa: S310 (a local URL built by the test)
        f"http://127.0.0.1:{first.web_port}/healthz", timeout=IO_TIMEOUT
    ) as response:
        assert response.status == 200
        assert json.loads(response.read())["status"] == "ok"
    _compose_healthchecks_pass(first)
    lines = _password_lines(first.out())
    assert len(lines) == 1, first.out()
    password = lines[0].rsplit(" ", 1)[1]
    assert password not in first.err()  # shown once on stdout, never logged

    engine = make_engine(Settings(database_url=server.database_url, _env_file=None))  # type: ignore[call-arg]
    try:
        with make_session_factory(engine)() as session:
            operator = accounts.authenticate_operator(session, username="admin", password=password)
            assert operator is not None and operator.role == "admin"
    finally:
        engine.dispose()

    # The golden path through the composed process: provision, send with SMTP, fetch with POP3.
    server.cli("customer", "add", "Acme")
    server.cli("domain", "add", "acme.example", "--customer", "Acme")
    server.cli("mailbox", "add", "alice@acme.example", "--password-stdin", stdin="alice-pw-1\n")
    with smtplib.SMTP("127.0.0.1", first.smtp_port, timeout=IO_TIMEOUT) as smtp:
        refused = smtp.sendmail(
            "sender@remote.example",
            ["alice@acme.example"],
            b"Subject: hello\r\n\r\nfrom the serve test\r\n",
        )
        assert refused == {}
    pop = poplib.POP3("127.0.0.1", first.pop3_port, timeout=IO_TIMEOUT)
    try:
        pop.user("alice@acme.example")
        pop.pass_("alice-pw-1")
        count, _size = pop.stat()
        assert count == 1
        _resp, lines_, _octets = pop.retr(1)
        assert b"from the serve test" in lines_
    finally:
        pop.quit()

    assert first.terminate() == 0, first.err()
    assert "stopped" in first.err()

    second = server.start(2)
    assert _password_lines(second.out()) == []
    assert second.terminate() == 0, second.err()


def test_sigterm_lets_a_message_in_progress_finish_and_never_loses_it(server: Server) -> None:
    served = server.start(1)
    server.cli("customer", "add", "Acme")
    server.cli("domain", "add", "acme.example", "--customer", "Acme")
    server.cli("mailbox", "add", "bob@acme.example", "--password-stdin", stdin="bob-pw-123\n")

    smtp = smtplib.SMTP("127.0.0.1", served.smtp_port, timeout=IO_TIMEOUT)
    smtp.ehlo("client.example")
    assert smtp.mail("sender@remote.example")[0] == 250
    assert smtp.rcpt("bob@acme.example")[0] == 250
    assert smtp.docmd("DATA")[0] == 354
    smtp.send(b"Subject: in flight\r\n\r\nfirst half\r\n")

    served.proc.send_signal(signal.SIGTERM)
    # The listener closes at once: a new client is refused while the old one finishes.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", served.smtp_port), timeout=1).close()
        except OSError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("SMTP still accepted new connections after SIGTERM")
    assert served.proc.poll() is None, "exited before the transaction in progress finished"

    smtp.send(b"second half\r\n.\r\n")
    code, reply = smtp.getreply()
    assert code == 250, reply
    with contextlib.suppress(smtplib.SMTPException, OSError):
        smtp.quit()
    smtp.close()
    assert served.proc.wait(timeout=60) == 0, served.err()

    new = list((server.maildir / "acme.example" / "bob" / "new").iterdir())
    assert len(new) == 1
    body = new[0].read_bytes()
    assert b"first half\nsecond half\n" in body


def _wait_for(
    predicate: Callable[[], bool], what: str, *, log: Path | None = None, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            detail = f"; its log:\n{log.read_text()}" if log is not None else ""
            raise AssertionError(f"timed out waiting for {what}{detail}")
        time.sleep(0.1)


@pytest.mark.parametrize("kind", ["smtp", "pop3", "web"])
def test_one_edge_with_worker_processes_sharing_a_port(sqlite_server: Server, kind: str) -> None:
    """``mailhost KIND --workers 2`` on port 0: both workers serve one port; a killed worker
    is replaced; SIGTERM stops them all and the supervisor exits 0."""
    server = sqlite_server
    server.cli("db", "upgrade")
    stderr = server.tmp_path / f"{kind}.err"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailhost", kind, "--workers", "2"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=server.tmp_path,
            env=server.env(**{f"{kind}_port": 0}),
        )
    try:

        def ready_ports() -> list[str]:
            lines = [parse_ready_line(line) for line in stderr.read_text().splitlines()]
            return [str(r.port(kind)) for r in lines if r is not None and r.service == kind]

        _wait_for(
            lambda: len(ready_ports()) >= 2 or proc.poll() is not None, "2 workers", log=stderr
        )
        assert proc.poll() is None, stderr.read_text()
        ports = ready_ports()
        assert len(set(ports)) == 1, ports  # one port, shared
        port = int(ports[0])

        def answers() -> bool:
            if kind == "web":
                url = f"http://127.0.0.1:{port}/healthz"
                with urllib.request.urlopen(url, timeout=IO_TIMEOUT) as response:  # noqa: S310
                    return bool(response.status == 200)
            with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
                sock.settimeout(IO_TIMEOUT)
                return sock.recv(3) in (b"220", b"+OK")

        assert all(answers() for _ in range(6))

        pids = [
            int(line.rsplit("pid ", 1)[1].rstrip(")"))
            for line in stderr.read_text().splitlines()
            if f"started {kind} worker" in line
        ]
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)
        _wait_for(lambda: "restarting" in stderr.read_text(), "a restart", log=stderr)
        _wait_for(lambda: len(ready_ports()) >= 3, "the replacement worker", log=stderr)
        assert ready_ports()[-1] == str(port)
        assert all(answers() for _ in range(6))
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=60)
    assert status == 0, stderr.read_text()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


# ---------------------------------------------------------------------------- README tour
_VOLATILE = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"), "<TIME>"),
    (re.compile(r"\w{3}, \d{1,2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}"), "<DATE>"),
    (re.compile(r"<\d+\.\d+@[^>]*>"), "<MESSAGE-ID>"),
    (re.compile(r"(delivered as|ESMTP id) [0-9A-Za-z]+"), r"\1 <QUEUE-ID>"),
    (re.compile(r"(EHLO|from) [^\s(]+"), r"\1 <CLIENT-HOST>"),
    (re.compile(r"swaks v\S+"), "swaks <VERSION>"),
    (re.compile(r"^1 \d+$", re.M), "1 <SIZE>"),
    (re.compile(r"^(used_bytes\s+)\d+$", re.M), r"\1<SIZE>"),
]


def _normalise(text: str, secrets: dict[str, str]) -> str:
    for secret, name in secrets.items():
        text = text.replace(secret, name)
    for pattern, replacement in _VOLATILE:
        text = pattern.sub(replacement, text)
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


def _tour_steps(readme: str) -> list[tuple[str, str]]:
    """(command, expected output) for every ``$ `` line in the tour's code blocks."""
    tour = readme.split("## A five-minute tour", 1)[1].split("\nMore of the CLI", 1)[0]
    steps: list[tuple[str, str]] = []
    for block in re.findall(r"^```\n(.*?)^```", tour, re.M | re.S):
        command: str | None = None
        expected: list[str] = []
        lines = iter(block.splitlines())
        for line in lines:
            if line.startswith("$"):
                if command:
                    steps.append((command, "\n".join(expected)))
                command, expected = line[1:].strip(), []
                while command.endswith("\\"):
                    command = command[:-1] + next(lines).strip()
            else:
                expected.append(line)
        if command:
            steps.append((command, "\n".join(expected)))
    return steps


def test_the_readme_tour_is_true(sqlite_server: Server) -> None:
    """Replays the README's five-minute tour against a real ``mailhost serve`` and compares
    every output, with times, generated secrets, sizes and queue ids masked."""
    for tool in ("swaks", "curl"):
        if shutil.which(tool) is None:
            if in_ci():
                pytest.fail(f"{tool} is needed for the README tour (apt-get install {tool})")
            pytest.skip(f"{tool} is not installed")
    server = sqlite_server
    # The README runs with the defaults (./var under the checkout); so does this, in tmp_path.
    server.database_url = "sqlite:///./var/mailhost.db"
    server.maildir = server.tmp_path / "var" / "mail"
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    steps = _tour_steps(readme)
    assert len(steps) >= 8
    readme_password = re.search(r"^password\s+(\S+)$", readme, re.M)
    assert readme_password is not None

    served = server.start(1, MAILHOST_HOSTNAME="vm")  # the README shows `220 vm` (its host name)
    env = server.env()
    del env["MAILHOST_DATABASE_URL"], env["MAILHOST_MAILDIR_ROOT"]
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    secrets = {readme_password.group(1): "<PASSWORD>"}
    actual_password: str | None = None
    for command, expected in steps:
        command = command.replace("127.0.0.1:2525", f"127.0.0.1:{served.smtp_port}")
        command = command.replace("127.0.0.1:1110", f"127.0.0.1:{served.pop3_port}")
        if actual_password is not None:
            command = command.replace(readme_password.group(1), actual_password)
        result = subprocess.run(
            ["bash", "-c", command],
            cwd=server.tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (command, result.stderr)
        output = result.stdout + (result.stderr if command.startswith("swaks") else "")
        generated = re.search(r"^password\s+(\S+)$", output, re.M)
        if generated:
            actual_password = generated.group(1)
            secrets[actual_password] = "<PASSWORD>"
        output = output.replace(str(served.smtp_port), "2525")
        assert _normalise(output, secrets) == _normalise(expected, secrets), command
    assert served.terminate() == 0
