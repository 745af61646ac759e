"""Bulk import of mailboxes from CSV (preview, then all-or-nothing) and export as CSV.

Format (header row required, columns in any order)::

    address,password,password_hash,quota

Each row has exactly one of ``password`` (plain, hashed on import) or ``password_hash`` (an
existing hash in a scheme the platform verifies, for migrations); ``quota`` is optional
('2G', '500M', bytes; empty = the domain's default). Export writes the same columns with the
hash filled in and the password left empty, so an export can be imported elsewhere.

The preview is a real dry run: every row goes through ``create_mailbox`` inside one
transaction (a savepoint per row, so one bad row does not hide the next) which is then rolled
back. The import runs the same code and commits only if no row failed.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.csvsafe import restore_cell, safe_row
from app.errors import MailhostError, ValidationError
from app.models import Domain, Mailbox
from app.passwords import hash_password, is_supported_hash
from app.services import domains
from app.services.audit import Actor, audit
from app.services.mailboxes import create_mailbox, parse_size
from web.deps import SessionDep
from web.portal.auth import AdminDep, FormDep
from web.portal.common import redirect
from web.portal.errors import PortalError
from web.portal.render import render

router = APIRouter()

COLUMNS = ("address", "password", "password_hash", "quota")
MAX_BYTES = 5 * 1024 * 1024
MAX_ROWS = 10_000
# Mirrors the mailbox service's rule, checked here only because the dry run hands the
# service a placeholder hash instead of spending an argon2 hash on every previewed row.
MIN_PASSWORD = 8


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
            if row.password and dry_run and len(row.password) < MIN_PASSWORD:
                raise ValidationError(f"password must have at least {MIN_PASSWORD} characters")
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


@router.get("/import")
def import_form(request: Request, auth: AdminDep) -> HTMLResponse:
    return render(request, "import/upload.html", {"error": None})


def _read_upload(text: str | None) -> str:
    if text is None:
        raise PortalError(400, "No file", "Choose a CSV file to upload.")
    return text


@router.post("/import/preview", response_model=None)
def import_preview(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep
) -> Response:
    upload = data.file("file")
    raw = upload.file.read(MAX_BYTES + 1) if upload is not None else b""
    if len(raw) > MAX_BYTES:
        return render(
            request, "import/upload.html", {"error": "The file is larger than 5 MiB."}, status=413
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return render(
            request, "import/upload.html", {"error": "The file is not UTF-8 text."}, status=422
        )
    result = parse_csv(text)
    if not result.file_errors:
        run_import(session, actor=auth.actor, result=result, dry_run=True)
    session.rollback()
    return render(
        request,
        "import/preview.html",
        {"result": result, "csv_text": text, "done": False},
        status=200 if result.ok else 422,
    )


@router.post("/import/confirm", response_model=None)
def import_confirm(
    request: Request, session: SessionDep, auth: AdminDep, data: FormDep
) -> Response:
    text = data.get("csv_text")
    result = parse_csv(text)
    if not result.file_errors:
        run_import(session, actor=auth.actor, result=result, dry_run=False)
    if not result.ok:
        # All or nothing: one bad row (perhaps someone created that address meanwhile)
        # and not a single mailbox of the file is kept.
        session.rollback()
        return render(
            request,
            "import/preview.html",
            {"result": result, "csv_text": text, "done": False},
            status=422,
        )
    session.commit()
    return redirect(f"/mailboxes?done=imported&imported={len(result.rows)}")


def _export_rows(factory: sessionmaker[Session], domain_id: int | None) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    with factory() as session:
        query = (
            select(Mailbox.local_part, Domain.name, Mailbox.password_hash, Mailbox.quota_bytes)
            .join(Domain, Mailbox.domain_id == Domain.id)
            .order_by(Mailbox.id)
            .execution_options(yield_per=2000)
        )
        if domain_id is not None:
            query = query.where(Mailbox.domain_id == domain_id)
        for n, (local, domain, pw_hash, quota) in enumerate(session.execute(query), 1):
            writer.writerow(safe_row((f"{local}@{domain}", "", pw_hash, quota)))
            if n % 1000 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
    yield buffer.getvalue()


@router.get("/export.csv")
def export_csv(
    request: Request, session: SessionDep, auth: AdminDep, domain: int | None = None
) -> StreamingResponse:
    """Admins only: the file carries password hashes."""
    name = "mailboxes.csv"
    if domain is not None:
        name = f"mailboxes-{domains.get_domain(session, domain_id=domain).name}.csv"
    audit(
        session,
        actor=auth.actor,
        action="export",
        object_type="mailbox",
        object_id=domain,
        detail="CSV export with password hashes",
    )
    session.commit()
    return StreamingResponse(
        _export_rows(request.app.state.session_factory, domain),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
