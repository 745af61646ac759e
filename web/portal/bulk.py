"""Bulk import of mailboxes from CSV (preview, then all-or-nothing) and export as CSV.

The file format, the dry run and the import are ``app.services.mailbox_import``; this module
is the upload, the preview page and the commit. Export writes the same columns with the hash
filled in and the password left empty, so an export can be imported elsewhere.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.csvsafe import safe_row
from app.models import Domain, Mailbox
from app.services import domains
from app.services.audit import audit
from app.services.mailbox_import import COLUMNS, parse_csv, run_import
from web.deps import SessionDep
from web.params import Id
from web.portal.auth import AdminDep, FormDep
from web.portal.common import redirect
from web.portal.errors import PortalError
from web.portal.render import render

router = APIRouter()

MAX_BYTES = 5 * 1024 * 1024  # an upload larger than this is refused before parsing


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
    request: Request, session: SessionDep, auth: AdminDep, domain: Id | None = None
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
