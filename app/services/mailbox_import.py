"""Mailbox import from CSV: parse the file, then create every row in one transaction.

Format (header row required, columns in any order)::

    address,password,password_hash,quota

Each row has exactly one of ``password`` (plain, hashed on import) or ``password_hash`` (an
existing hash in a scheme the platform verifies, for migrations); ``quota`` is optional
('2G', '500M', bytes; empty = the domain's default).

A dry run is real: every row goes through ``create_mailbox`` inside the caller's transaction
(a savepoint per row, so one bad row does not hide the next), which the caller then rolls
back. The import runs the same code; the caller commits only if no row failed (all or
nothing). Every door (portal, API, CLI) uses these two functions.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from functools import lru_cache

from sqlalchemy.orm import Session

from app.csvsafe import restore_cell
from app.errors import MailhostError, ValidationError
from app.passwords import hash_password, is_supported_hash
from app.services.audit import Actor, audit
from app.services.mailboxes import check_password, create_mailbox, parse_size

COLUMNS = ("address", "password", "password_hash", "quota")
MAX_ROWS = 10_000


@dataclass
class ImportRow:
    line: int
    address: str
    password: str
    password_hash: str
    quota: str
    errors: list[str] = field(default_factory=list)

    @property
    def credential(self) -> str:
        return "hash" if self.password_hash else "password" if self.password else "-"


@dataclass
class ImportResult:
    rows: list[ImportRow]
    file_errors: list[str]

    @property
    def ok(self) -> bool:
        return not self.file_errors and all(not r.errors for r in self.rows)

    @property
    def bad_rows(self) -> int:
        return sum(1 for r in self.rows if r.errors)


def parse_csv(text: str) -> ImportResult:
    """Rows of the file; problems with the file as a whole go to ``file_errors``."""
    if not text.strip():
        return ImportResult([], ["the file is empty"])
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    if "address" not in header or not {"password", "password_hash"} & set(header):
        return ImportResult(
            [], ["the first line must name the columns: address,password,password_hash,quota"]
        )
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        return ImportResult([], [f"unknown column(s): {', '.join(unknown)}"])
    rows: list[ImportRow] = []
    try:
        for record in reader:
            if not any((v or "").strip() for v in record.values() if isinstance(v, str)):
                continue  # blank line
            if len(rows) >= MAX_ROWS:
                return ImportResult(rows, [f"more than {MAX_ROWS} rows: split the file"])
            rows.append(
                ImportRow(
                    line=reader.line_num,
                    address=restore_cell((record.get("address") or "").strip()),
                    password=record.get("password") or "",
                    password_hash=(record.get("password_hash") or "").strip(),
                    quota=(record.get("quota") or "").strip(),
                )
            )
    except csv.Error as exc:
        return ImportResult(rows, [f"line {reader.line_num}: {exc}"])
    if not rows:
        return ImportResult([], ["the file has no rows"])
    return ImportResult(rows, [])


@lru_cache(maxsize=1)
def _placeholder_hash() -> str:
    return hash_password("placeholder used only by the import preview")


def run_import(session: Session, *, actor: Actor, result: ImportResult, dry_run: bool) -> None:
    """Create every row (or try to); row errors are recorded on the rows. The caller commits
    only if ``result.ok`` and not ``dry_run``; otherwise it rolls back."""
    audit(
        session,
        actor=actor,
        action="import_preview" if dry_run else "import",
        object_type="mailbox",
        detail=f"{len(result.rows)} rows",
    )
    # This flush also makes SQLite open the transaction before the first SAVEPOINT, so
    # releasing a savepoint can never commit (pysqlite only BEGINs before DML).
    session.flush()
    for row in result.rows:
        try:
            if bool(row.password) == bool(row.password_hash):
                raise ValidationError("give exactly one of password or password_hash")
            if row.password_hash and not is_supported_hash(row.password_hash):
                raise ValidationError("password_hash is not in a scheme the platform verifies")
            if row.password and dry_run:
                # The dry run hands the service a placeholder hash (no argon2 per previewed
                # row), so the password rules are checked here, by the service's own check.
                check_password(row.password)
            quota = None
            if row.quota:
                try:
                    quota = parse_size(row.quota)
                except ValidationError as exc:
                    raise ValidationError(f"quota: {exc.message}") from None
            with session.begin_nested():
                create_mailbox(
                    session,
                    actor=actor,
                    address=row.address,
                    password=None if (row.password_hash or dry_run) else row.password,
                    password_hash=row.password_hash or (_placeholder_hash() if dry_run else None),
                    quota_bytes=quota,
                )
        except MailhostError as exc:
            row.errors.append(exc.message)
