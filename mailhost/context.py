"""What one CLI invocation works with: settings, streams, and lazily built engine and store."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import make_engine, make_session_factory, transaction
from app.errors import ValidationError
from app.maildir import MaildirStore

# The command's name, in usage lines and at the start of every message it writes.
PROG = "mailhost"


class UsageError(Exception):
    """The command line itself is wrong (exit status 2, like argparse)."""


@dataclass
class Context:
    """Built once per invocation in ``mailhost.cli.main`` and handed to every command."""

    settings: Settings
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)
    _engine: Engine | None = None
    _factory: sessionmaker[Session] | None = None
    _store: MaildirStore | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.settings)
        return self._engine

    @property
    def session_factory(self) -> sessionmaker[Session]:
        if self._factory is None:
            self._factory = make_session_factory(self.engine)
        return self._factory

    @property
    def store(self) -> MaildirStore:
        if self._store is None:
            self._store = MaildirStore(self.settings.maildir_root, hostname=self.settings.hostname)
        return self._store

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One command, one transaction: everything it changed is committed or nothing is."""
        with transaction(self.session_factory) as session:
            yield session

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
            self._factory = None

    # ------------------------------------------------------------------ output
    def print(self, text: str = "") -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def note(self, text: str) -> None:
        """A remark for the human at the terminal (stderr, so stdout stays parseable)."""
        self.stderr.write(text + "\n")
        self.stderr.flush()

    def print_json(self, value: Any) -> None:
        self.print(json.dumps(value, indent=2, sort_keys=False, default=str))

    def print_record(self, record: Mapping[str, Any], *, as_json: bool) -> None:
        if as_json:
            self.print_json(record)
            return
        width = max((len(k) for k in record), default=0)
        for key, value in record.items():
            self.print(f"{key.ljust(width)}  {_human(value)}")

    def print_table(
        self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, as_json: bool
    ) -> None:
        if as_json:
            self.print_json(list(rows))
            return
        cells = [[_human(row.get(c)) for c in columns] for row in rows]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
        self.print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)))
        for r in cells:
            self.print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())

    # ------------------------------------------------------------------ passwords
    def read_password(
        self, *, from_stdin: bool, generate: bool, generator: Any
    ) -> tuple[str, bool]:
        """A new password and whether it was generated (then the caller prints it once).

        Never from the command line: argv is visible to every user in ``ps`` and lands in
        shell history.
        """
        if generate:
            return str(generator()), True
        if from_stdin:
            line = self.stdin.readline().rstrip("\r\n")
            if not line:
                raise ValidationError("no password on standard input", field="password")
            return line, False
        if not (self.stdin.isatty() and sys.stdin.isatty()):
            raise UsageError(
                "no terminal to ask for a password: use --password-stdin or --generate-password"
            )
        first = getpass.getpass("New password: ")
        second = getpass.getpass("Repeat password: ")
        if first != second:
            raise ValidationError("the two passwords differ", field="password")
        if not first:
            raise ValidationError("empty password", field="password")
        return first, False


def _human(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(_human(v) for v in value) or "-"
    return str(value)
