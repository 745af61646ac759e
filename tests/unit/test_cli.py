"""The ``mailhost`` command: happy paths, --json, and every error path changing nothing."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import Base
from app.maildir import MailboxRef, MaildirStore
from app.models import AuditEntry
from app.services import accounts
from mailhost.cli import main
from tests.fs_helpers import undeletable

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Result:
    status: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Run = Callable[..., Result]


@pytest.fixture
def run(settings: Settings, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """``mailhost ARGS`` in this process against the test database and Maildir root."""
    monkeypatch.chdir(tmp_path)  # no stray ./.env from the developer's checkout

    def _run(*argv: str, stdin: str = "", url: str | None = None) -> Result:
        out, err = io.StringIO(), io.StringIO()
        status = main(
            [
                "--database-url",
                url or settings.database_url,
                "--maildir-root",
                str(settings.maildir_root),
                *argv,
            ],
            stdin=io.StringIO(stdin),
            stdout=out,
            stderr=err,
        )
        return Result(status, out.getvalue(), err.getvalue())

    return _run


def snapshot(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: 'nothing changed' means this is equal before and after."""
    with engine.connect() as conn:
        return {
            table.name: sorted(
                (tuple(row) for row in conn.execute(select(table))), key=lambda r: repr(r)
            )
            for table in Base.metadata.sorted_tables
        }


def assert_one_line_error(result: Result, *fragments: str, status: int = 1) -> None:
    assert result.status == status, result
    assert result.out == ""
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("mailhost: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def _add_alice(run: Run) -> None:
    assert run("customer", "add", "Acme Corp", "--price", "2.50").status == 0
    assert run("domain", "add", "acme.example", "--customer", "Acme Corp").status == 0
    r = run("mailbox", "add", "alice@acme.example", "--password-stdin", stdin="alice-password\n")
    assert r.status == 0, r


# ---------------------------------------------------------------------------- happy paths
def test_customer_domain_mailbox_round_trip_with_json(
    run: Run, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    r = run("customer", "add", "Acme Corp", "--price", "2.50", "--currency", "EUR", "--json")
    assert r.status == 0, r
    customer = r.json()
    assert customer["name"] == "Acme Corp"
    assert customer["price_per_mailbox"] == "2.50"
    assert customer["currency"] == "EUR"

    r = run("domain", "add", "Acme.Example", "--customer", "acme corp", "--json")
    assert r.status == 0, r
    assert r.json()["name"] == "acme.example"
    assert r.json()["customer"] == "Acme Corp"

    r = run("mailbox", "add", "Alice@acme.example", "--generate-password", "--quota", "500M")
    assert r.status == 0, r
    fields = dict(line.split(None, 1) for line in r.out.splitlines())
    assert fields["address"] == "alice@acme.example"
    assert fields["quota"] == "500M"
    password = fields["password"]
    assert len(password) >= 12
    # The Maildir exists at once, so a POP3 login before the first message sees an empty drop.
    maildir = store.mailbox_path(MailboxRef("acme.example", "alice"))
    assert all((maildir / sub).is_dir() for sub in ("tmp", "new", "cur"))
    with session_factory() as s:
        assert accounts.authenticate_mailbox(s, address="alice@acme.example", password=password)
        assert not accounts.authenticate_mailbox(s, address="alice@acme.example", password="x")

    r = run("mailbox", "add", "bob@acme.example", "--password-stdin", stdin="bob-password-1\n")
    assert r.status == 0, r
    assert "password" not in dict(line.split(None, 1) for line in r.out.splitlines())
    with session_factory() as s:
        assert accounts.authenticate_mailbox(
            s, address="bob@acme.example", password="bob-password-1"
        )

    listed = run("mailbox", "list", "--json").json()
    assert [m["address"] for m in listed] == ["alice@acme.example", "bob@acme.example"]
    assert listed[0]["quota_bytes"] == 500 * 1024**2
    assert [m["address"] for m in run("mailbox", "list", "--domain", "acme.example", "--json")
            .json()] == ["alice@acme.example", "bob@acme.example"]  # fmt: skip
    assert run("mailbox", "list", "--search", "bob", "--json").json()[0]["address"] == (
        "bob@acme.example"
    )
    table = run("mailbox", "list").out.splitlines()
    assert table[0].split() == ["ID", "ADDRESS", "STATUS", "QUOTA", "POP3"]
    assert table[1].split()[1:] == ["alice@acme.example", "active", "500M", "yes"]

    shown = run("customer", "show", "Acme Corp", "--json").json()
    assert shown["domains"] == ["acme.example"]
    assert shown["mailboxes"] == 2
    domain = run("domain", "show", "ACME.example", "--json").json()
    assert domain["mailboxes"] == 2
    assert [c["name"] for c in run("customer", "list", "--json").json()] == ["Acme Corp"]

    # Every change went through the services as the CLI actor, so it is audited.
    with session_factory() as s:
        entries = s.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        assert {(e.actor_type, e.object_name) for e in entries} >= {
            ("cli", "Acme Corp"),
            ("cli", "acme.example"),
            ("cli", "alice@acme.example"),
        }
        assert all(password not in (e.detail or "") for e in entries)


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("mailhost ")
    assert main(["mailbox", "add", "--help"]) == 0
    helptext = capsys.readouterr().out
    assert "--password-stdin" in helptext and "--generate-password" in helptext
    assert "--password " not in helptext  # the refusing option stays hidden


def test_mailbox_show_reports_usage_and_remove_deletes_the_files(
    run: Run, store: MaildirStore
) -> None:
    _add_alice(run)
    ref = MailboxRef("acme.example", "alice")
    store.deliver([(ref, [b"Subject: hi\n\nhello\n"])])
    shown = run("mailbox", "show", "alice@acme.example", "--json").json()
    assert shown["messages"] == 1
    assert shown["used_bytes"] == len(b"Subject: hi\n\nhello\n")

    r = run("mailbox", "remove", "alice@acme.example")
    assert r.status == 0, r
    assert r.out.strip() == "mailbox alice@acme.example removed"
    assert not store.mailbox_path(ref).exists()
    assert run("mailbox", "list", "--json").json() == []
    assert_one_line_error(run("mailbox", "show", "alice@acme.example"), "alice@acme.example")


def test_remove_whose_message_files_cannot_be_removed_warns_and_succeeds(
    run: Run, store: MaildirStore
) -> None:
    _add_alice(run)
    ref = MailboxRef("acme.example", "alice")
    store.deliver([(ref, [b"Subject: hi\n\nhello\n"])])
    path = store.mailbox_path(ref)
    with undeletable(path):
        r = run("mailbox", "remove", "alice@acme.example")
        # Removed from the database (exit 0, the usual line on stdout); the files that stay
        # are one warning line on stderr with the path, for the administrator to clean up.
        assert r.status == 0, r
        assert r.out.strip() == "mailbox alice@acme.example removed"
        [line] = r.err.splitlines()
        assert line.startswith("mailhost: warning: mailbox alice@acme.example was deleted")
        assert str(path) in line
        assert run("mailbox", "list", "--json").json() == []
        assert path.exists()
        # The cascade of a domain removal reports it the same way.
        run("mailbox", "add", "alice@acme.example", "--password-stdin", stdin="alice-password\n")
        r = run("domain", "remove", "acme.example", "--cascade")
        assert r.status == 0, r
        assert r.out.strip() == "domain acme.example removed"
        assert "mailhost: warning: mailbox alice@acme.example" in r.err
    assert run("domain", "list", "--json").json() == []


def test_suspend_resume_change_and_password(
    run: Run, session_factory: sessionmaker[Session]
) -> None:
    _add_alice(run)
    assert run("mailbox", "suspend", "alice@acme.example").out.strip() == (
        "mailbox alice@acme.example suspended"
    )
    assert run("mailbox", "show", "alice@acme.example", "--json").json()["status"] == "suspended"
    with session_factory() as s:  # a suspended mailbox cannot log in
        assert not accounts.authenticate_mailbox(
            s, address="alice@acme.example", password="alice-password"
        )
    assert run("mailbox", "resume", "alice@acme.example").status == 0
    r = run("mailbox", "change", "alice@acme.example", "--quota", "2G", "--no-pop3", "--json")
    assert r.status == 0, r
    assert r.json()["quota"] == "2G"
    assert r.json()["pop3"] is False
    assert run("mailbox", "set", "alice@acme.example", "--pop3").status == 0

    r = run("mailbox", "password", "alice@acme.example", "--generate-password")
    assert r.status == 0, r
    new_password = r.out.splitlines()[-1].removeprefix("password: ")
    with session_factory() as s:
        assert accounts.authenticate_mailbox(s, address="alice@acme.example", password=new_password)

    assert run("domain", "suspend", "acme.example").status == 0
    assert run("domain", "show", "acme.example", "--json").json()["status"] == "suspended"
    assert run("domain", "resume", "acme.example").status == 0
    r = run("domain", "change", "acme.example", "--max-mailboxes", "5", "--json")
    assert r.json()["max_mailboxes"] == 5
    r = run("domain", "change", "acme.example", "--catchall", "alice@acme.example", "--json")
    assert r.json()["catchall"] == "alice@acme.example"
    assert (
        run("customer", "change", "Acme Corp", "--price", "3", "--json").json()["price_per_mailbox"]
        == "3.00"
    )
    assert run("customer", "suspend", "Acme Corp").status == 0
    assert run("customer", "show", "Acme Corp", "--json").json()["status"] == "suspended"


def test_alias_commands(run: Run) -> None:
    _add_alice(run)
    r = run("mailbox", "add", "bob@acme.example", "--password-stdin", stdin="bob-password-1\n")
    assert r.status == 0, r
    r = run("alias", "add", "Info@acme.example", "alice@acme.example", "bob@acme.example", "--json")
    assert r.status == 0, r
    assert r.json()["address"] == "info@acme.example"
    assert r.json()["targets"] == ["alice@acme.example", "bob@acme.example"]
    r = run("alias", "change", "info@acme.example", "bob@acme.example", "--json")
    assert r.json()["targets"] == ["bob@acme.example"]
    assert [a["address"] for a in run("alias", "list", "--json").json()] == ["info@acme.example"]
    assert run("alias", "remove", "info@acme.example").status == 0
    assert run("alias", "list", "--json").json() == []


def test_operator_and_token_commands(run: Run, session_factory: sessionmaker[Session]) -> None:
    r = run("operator", "add", "Jo", "--role", "support", "--password-stdin", stdin="jo-secret-1\n")
    assert r.status == 0, r
    with session_factory() as s:
        op = accounts.authenticate_operator(s, username="jo", password="jo-secret-1")
        assert op is not None and op.role == "support"
    assert [o["username"] for o in run("operator", "list", "--json").json()] == ["jo"]

    r = run("token", "add", "billing sync", "--scope", "read", "billing:read", "--json")
    assert r.status == 0, r
    created = r.json()
    secret = created["token"]
    assert created["scopes"] == ["read", "billing:read"]
    with session_factory() as s:
        token = accounts.verify_token(s, token=secret)
        assert token is not None and token.name == "billing sync"
    listed = run("token", "list", "--json").json()
    assert [t["prefix"] for t in listed] == [created["prefix"]]
    assert secret not in run("token", "list", "--json").out  # shown once, never again
    assert secret not in run("token", "show", created["prefix"]).out
    assert run("token", "remove", str(created["id"])).status == 0
    with session_factory() as s:
        assert accounts.verify_token(s, token=secret) is None
    assert run("token", "list", "--json").json() == []
    assert len(run("token", "list", "--all", "--json").json()) == 1


# ---------------------------------------------------------------------------- error paths
ERROR_CASES = [
    # (argv, stdin, fragments of the one-line message, exit status)
    (["domain", "add", "other.example", "--customer", "Nobody"], "", ["Nobody"], 1),
    (["mailbox", "add", "x@unknown.example", "--generate-password"], "", ["unknown.example"], 1),
    (["mailbox", "add", "alice@acme.example", "--generate-password"], "", ["already exists"], 1),
    (["mailbox", "add", "ALICE@Acme.Example", "--generate-password"], "", ["already exists"], 1),
    (["mailbox", "add", "not an address", "--generate-password"], "", ["invalid address"], 1),
    (["mailbox", "add", "a..b@acme.example", "--generate-password"], "", ["invalid"], 1),
    (["mailbox", "add", "x@acme.example", "--password-stdin"], "short\n", ["password"], 1),
    (["mailbox", "add", "x@acme.example", "--password-stdin"], "", ["password"], 1),
    (["mailbox", "add", "x@acme.example"], "", ["no terminal"], 2),
    (["mailbox", "add", "x@acme.example", "--password", "hunter2-secret"], "", ["never"], 2),
    (["mailbox", "add", "x@acme.example", "--password=hunter2-secret"], "", ["never"], 2),
    (["mailbox", "add", "x@acme.example", "--generate-password", "--quota", "12Q"], "", [], 1),
    (["mailbox", "remove", "nobody@acme.example"], "", ["nobody@acme.example"], 1),
    (["customer", "add", "acme corp"], "", ["already exists"], 1),
    (["customer", "add", "New Co", "--currency", "euro"], "", ["currency"], 1),
    (["customer", "add", "New Co", "--price", "cheap"], "", ["price"], 1),
    (["customer", "add", "New Co", "--price", "-1"], "", [], 1),
    (["domain", "add", "acme.example", "--customer", "Acme Corp"], "", ["acme.example"], 1),
    (["domain", "add", "bad_name.example", "--customer", "Acme Corp"], "", ["invalid"], 1),
    (["domain", "remove", "acme.example"], "", [], 1),  # has mailboxes: refused
    (["alias", "add", "info@acme.example", "ghost@elsewhere.example"], "", [], 1),
    (["alias", "add", "alice@acme.example", "alice@acme.example"], "", [], 1),
    (["token", "add", "t", "--scope", "everything"], "", ["everything"], 1),
    (["operator", "add", "bad name!", "--password-stdin"], "long-enough-1\n", [], 1),
    (["customer", "change", "Acme Corp"], "", ["nothing to change"], 2),
    (["mailbox"], "", ["required"], 2),
]


@pytest.mark.parametrize(
    ("argv", "stdin", "fragments", "status"),
    ERROR_CASES,
    ids=[" ".join(case[0])[:60] for case in ERROR_CASES],
)
def test_error_paths_give_one_line_and_change_nothing(
    run: Run,
    engine: Engine,
    store: MaildirStore,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    stdin: str,
    fragments: list[str],
    status: int,
) -> None:
    _add_alice(run)
    before = snapshot(engine)
    files_before = sorted(p for p in store.root.rglob("*"))
    result = run(*argv, stdin=stdin)
    captured = capsys.readouterr()  # argparse writes its usage errors to sys.stderr itself
    result = Result(result.status, result.out + captured.out, result.err + captured.err)
    assert_one_line_error(result, *fragments, status=status)
    assert "hunter2-secret" not in result.err
    assert snapshot(engine) == before
    assert sorted(p for p in store.root.rglob("*")) == files_before


def test_bad_database_url_and_unreachable_database(
    run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_one_line_error(
        run("customer", "list", url="nosuchdb://x/y"), "unsupported database", status=1
    )
    assert_one_line_error(run("customer", "list", url="::not a url::"), "database URL", status=1)
    # Port 1 on localhost: connection refused at once.
    assert_one_line_error(
        run("customer", "add", "X", url="postgresql://postgres@127.0.0.1:1/none"),
        "cannot use the database",
        status=1,
    )


def test_database_without_schema_says_how_to_fix_it(run: Run, tmp_path: Path) -> None:
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    assert_one_line_error(run("customer", "list", url=empty), "mailhost db upgrade", status=1)


def test_removing_the_last_admin_is_refused(run: Run, engine: Engine) -> None:
    assert run("operator", "add", "root", "--password-stdin", stdin="root-secret-1\n").status == 0
    before = snapshot(engine)
    assert_one_line_error(run("operator", "remove", "root"))
    assert snapshot(engine) == before


# ---------------------------------------------------------------------------- subprocess
def _subprocess(
    tmp_path: Path, env_extra: dict[str, str], *argv: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOST_")}
    env.update(env_extra)
    return subprocess.run(
        [sys.executable, "-m", "mailhost", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
    )


def test_as_a_real_process_from_db_upgrade_to_json(tmp_path: Path) -> None:
    """The installed entry point end to end, on a database created by ``db upgrade``."""
    env = {
        "MAILHOST_DATABASE_URL": f"sqlite:///{tmp_path / 'var' / 'mailhost.db'}",
        "MAILHOST_MAILDIR_ROOT": str(tmp_path / "mail"),
    }
    p = _subprocess(tmp_path, env, "db", "upgrade")
    assert p.returncode == 0, p.stderr
    assert "up to date" in p.stdout
    p = _subprocess(tmp_path, env, "customer", "add", "Acme", "--price", "2.50")
    assert p.returncode == 0, p.stderr
    p = _subprocess(tmp_path, env, "domain", "add", "acme.example", "--customer", "Acme")
    assert p.returncode == 0, p.stderr
    p = _subprocess(
        tmp_path, env, "mailbox", "add", "a@acme.example", "--password-stdin", stdin="pw-123456\n"
    )
    assert p.returncode == 0, p.stderr
    p = _subprocess(tmp_path, env, "mailbox", "add", "a@acme.example", "--generate-password")
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr == "mailhost: error: mailbox a@acme.example already exists\n"
    p = _subprocess(tmp_path, env, "mailbox", "add", "b@acme.example", "--password", "pw-123456")
    assert p.returncode == 2
    assert p.stderr.count("\n") == 1 and "pw-123456" not in p.stderr
    p = _subprocess(tmp_path, env, "mailbox", "list", "--json")
    assert p.returncode == 0, p.stderr
    assert [m["address"] for m in json.loads(p.stdout)] == ["a@acme.example"]
    assert (tmp_path / "mail" / "acme.example" / "a" / "new").is_dir()


def test_bad_database_url_as_a_real_process(tmp_path: Path) -> None:
    p = _subprocess(tmp_path, {"MAILHOST_DATABASE_URL": "mysql://x@y/z"}, "customer", "list")
    assert p.returncode == 1
    assert p.stderr.startswith("mailhost: error: unsupported database 'mysql'")
    assert p.stderr.count("\n") == 1
    p = _subprocess(tmp_path, {"MAILHOST_SMTP_PORT": "many"}, "customer", "list")
    assert p.returncode == 1
    assert p.stderr.startswith("mailhost: error: invalid setting MAILHOST_SMTP_PORT")


def test_cert_writes_a_usable_pair_and_prints_the_settings(tmp_path: Path) -> None:
    import ssl

    p = _subprocess(tmp_path, {}, "cert", "--hostname", "mx.test.example")
    assert p.returncode == 0, p.stderr
    lines = dict(line.split("=", 1) for line in p.stdout.splitlines())
    cert, key = Path(lines["MAILHOST_TLS_CERT_FILE"]), Path(lines["MAILHOST_TLS_KEY_FILE"])
    assert cert == tmp_path / "var" / "tls" / "cert.pem"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    again = _subprocess(tmp_path, {}, "cert")
    assert again.returncode == 2 and "--force" in again.stderr


def test_domain_remove_cascade_removes_mailboxes_and_their_files(
    run: Run, store: MaildirStore
) -> None:
    _add_alice(run)
    ref = MailboxRef("acme.example", "alice")
    store.deliver([(ref, [b"Subject: x\n\nbody\n"])])
    assert run("domain", "remove", "acme.example", "--cascade").status == 0
    assert not store.mailbox_path(ref).exists()
    assert run("domain", "list", "--json").json() == []
    assert run("mailbox", "list", "--json").json() == []
    assert run("customer", "remove", "Acme Corp").status == 0
    assert run("customer", "list", "--json").json() == []


def _pty_session(
    tmp_path: Path, env: dict[str, str], argv: list[str], answers: list[bytes]
) -> tuple[int, str]:
    """Run ``mailhost ARGV`` on a pseudo-terminal, typing ``answers`` at its prompts."""
    import pty
    import select
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: a session with the pty as its controlling terminal
        try:
            os.chdir(tmp_path)
            os.execve(sys.executable, [sys.executable, "-m", "mailhost", *argv], env)
        finally:
            os._exit(127)
    output = b""
    deadline = time.monotonic() + 60
    pending = list(answers)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            # Answer each prompt once, only after it appeared (echo is off from then on).
            while pending and output.count(b"password: ") > len(answers) - len(pending):
                os.write(fd, pending.pop(0) + b"\n")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_password_prompt_asks_twice_on_a_terminal(
    settings: Settings, engine: Engine, tmp_path: Path, session_factory: sessionmaker[Session]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILHOST_")}
    env["MAILHOST_DATABASE_URL"] = settings.database_url
    env["MAILHOST_MAILDIR_ROOT"] = str(settings.maildir_root)
    assert main(["--database-url", settings.database_url, "customer", "add", "Acme"]) == 0
    assert main(["--database-url", settings.database_url, "domain", "add", "acme.example",
                 "--customer", "Acme"]) == 0  # fmt: skip

    status, output = _pty_session(
        tmp_path, env, ["mailbox", "add", "c@acme.example"], [b"typed-secret-1", b"typed-secret-2"]
    )
    assert status == 1
    assert "New password:" in output and "Repeat password:" in output
    assert "mailhost: error: the two passwords differ" in output
    assert "typed-secret" not in output  # not echoed

    status, output = _pty_session(
        tmp_path, env, ["mailbox", "add", "c@acme.example"], [b"typed-secret-1", b"typed-secret-1"]
    )
    assert status == 0, output
    with session_factory() as s:
        assert accounts.authenticate_mailbox(s, address="c@acme.example", password="typed-secret-1")


def test_alias_and_catchall_refuse_another_customers_mailbox(run: Run, engine: Engine) -> None:
    """The audit's finding through the CLI door: one-line error, exit 1, nothing changed."""
    _add_alice(run)
    assert run("customer", "add", "Beta").status == 0
    assert run("domain", "add", "beta.example", "--customer", "Beta").status == 0
    r = run("mailbox", "add", "bob@beta.example", "--password-stdin", stdin="bob-password-1\n")
    assert r.status == 0, r
    before = snapshot(engine)
    for argv in (
        ["alias", "add", "steal@acme.example", "bob@beta.example"],
        ["alias", "add", "steal@acme.example", "alice@acme.example", "bob@beta.example"],
        ["domain", "change", "acme.example", "--catchall", "bob@beta.example"],
    ):
        assert_one_line_error(run(*argv), "bob@beta.example", "this customer's domains")
    assert snapshot(engine) == before
    # The same address is fine for Beta's own alias.
    assert run("alias", "add", "team@beta.example", "bob@beta.example").status == 0


def test_customer_relay_domain_price(run: Run) -> None:
    r = run("customer", "add", "Relay Co", "--relay-price", "12.5", "--json")
    assert r.status == 0, r
    assert (r.json()["price_per_relay_domain"], r.json()["price_per_mailbox"]) == ("12.50", "0.00")
    r = run("customer", "change", "Relay Co", "--relay-price", "7", "--json")
    assert r.status == 0, r
    assert r.json()["price_per_relay_domain"] == "7.00"
    r = run("customer", "change", "Relay Co", "--relay-price", "-1")
    assert r.status != 0 and "relay domain" in r.err, r
