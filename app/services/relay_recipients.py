"""A relay domain's listed recipients (recipient mode ``list``): add, remove, CSV import and
export, and the MX's lookup. Keyword-only functions over a Session that do not commit; a
customer's actor may read its own relay domains' list (``list_recipients``), never change it."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.csvsafe import restore_cell, safe_row
from app.errors import ConflictError, NotFoundError, ValidationError
from app.models import RelayDomain, RelayRecipient
from app.services.addresses import normalise_domain, normalise_local_part
from app.services.audit import Actor, audit
from app.services.relay import get_relay
from app.services.tenancy import isp_only

MAX_IMPORT_ROWS = 100_000


@dataclass(frozen=True, slots=True)
class ImportSummary:
    added: int
    already_listed: int
    removed: int


def _local_part(relay: RelayDomain, address: str, *, field: str = "address") -> str:
    """A local part, or a full address of this domain, to its stored (lower-case) local part."""
    raw = address.strip()
    local, at, domain_part = raw.rpartition("@")
    if not at:
        local = raw
    elif normalise_domain(domain_part, field=field) != relay.domain.name:
        raise ValidationError(f"{raw} is not an address of {relay.domain.name}", field=field)
    return normalise_local_part(local, field=field)


def list_recipients(
    session: Session,
    *,
    domain_id: int,
    search: str | None = None,
    after_id: int | None = None,
    limit: int = 1000,
    actor: Actor | None = None,
) -> list[RelayRecipient]:
    """The listed recipients. Readable by the domain's own customer administrators too (they
    see, never change, them: README "Customer administrators"); another customer's is 404."""
    get_relay(session, domain_id=domain_id, actor=actor)
    query = (
        select(RelayRecipient)
        .where(RelayRecipient.domain_id == domain_id)
        .order_by(RelayRecipient.local_part)
    )
    if search:
        query = query.where(
            RelayRecipient.local_part.contains(search.strip().lower(), autoescape=True)
        )
    if after_id is not None:
        query = query.where(RelayRecipient.id > after_id)
    return list(session.scalars(query.limit(max(0, limit))))


def count_recipients(session: Session, *, domain_id: int) -> int:
    return int(
        session.scalar(
            select(func.count(RelayRecipient.id)).where(RelayRecipient.domain_id == domain_id)
        )
        or 0
    )


def is_listed(session: Session, *, domain_id: int, local_part: str) -> bool:
    """Is ``local_part`` (any case) a listed recipient of the relay domain?"""
    return (
        session.scalar(
            select(RelayRecipient.id).where(
                RelayRecipient.domain_id == domain_id,
                RelayRecipient.local_part == local_part.lower(),
            )
        )
        is not None
    )


@isp_only("manage relay domains")
def add_recipient(
    session: Session, *, actor: Actor, domain_id: int, address: str
) -> RelayRecipient:
    """``address`` is a local part or a full address of the domain; ConflictError if listed."""
    relay = get_relay(session, domain_id=domain_id)
    local = _local_part(relay, address)
    if is_listed(session, domain_id=domain_id, local_part=local):
        raise ConflictError(f"{local}@{relay.domain.name} is already listed", field="address")
    row = RelayRecipient(domain_id=domain_id, local_part=local)
    session.add(row)
    session.flush()
    audit(
        session,
        actor=actor,
        action="relay.recipient_add",
        object_type="domain",
        object_id=domain_id,
        object_name=f"{local}@{relay.domain.name}",
    )
    return row


@isp_only("manage relay domains")
def remove_recipient(session: Session, *, actor: Actor, domain_id: int, address: str) -> None:
    relay = get_relay(session, domain_id=domain_id)
    local = _local_part(relay, address)
    result = session.execute(
        delete(RelayRecipient).where(
            RelayRecipient.domain_id == domain_id, RelayRecipient.local_part == local
        )
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise NotFoundError(f"{local}@{relay.domain.name} is not listed", field="address")
    audit(
        session,
        actor=actor,
        action="relay.recipient_remove",
        object_type="domain",
        object_id=domain_id,
        object_name=f"{local}@{relay.domain.name}",
    )


def parse_recipient_csv(session: Session, *, domain_id: int, text: str) -> list[str]:
    """The local parts named in a CSV (first column; a header ``address``, blank lines and
    lines starting with ``#`` are skipped). Every bad row is reported at once (line numbers),
    nothing is stored: ValidationError."""
    relay = get_relay(session, domain_id=domain_id)
    found: list[str] = []
    errors: list[str] = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        cell = restore_cell(row[0].strip())
        if number == 1 and cell.lower() in ("address", "email", "recipient"):
            continue
        try:
            local = _local_part(relay, cell)
        except ValidationError as exc:
            errors.append(f"line {number}: {exc.message}")
            continue
        if local not in found:
            found.append(local)
    if errors:
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise ValidationError("; ".join(errors[:5]) + more, field="file")
    if len(found) > MAX_IMPORT_ROWS:
        raise ValidationError(f"at most {MAX_IMPORT_ROWS} recipients per import", field="file")
    return found


@isp_only("manage relay domains")
def import_recipients(
    session: Session, *, actor: Actor, domain_id: int, text: str, replace: bool = False
) -> ImportSummary:
    """Add every address of the CSV ``text`` (all or nothing); ``replace`` also removes the
    listed recipients the file does not name."""
    relay = get_relay(session, domain_id=domain_id)
    wanted = parse_recipient_csv(session, domain_id=domain_id, text=text)
    existing = set(
        session.scalars(
            select(RelayRecipient.local_part).where(RelayRecipient.domain_id == domain_id)
        )
    )
    new = [local for local in wanted if local not in existing]
    session.add_all(RelayRecipient(domain_id=domain_id, local_part=local) for local in new)
    removed = 0
    if replace:
        gone = sorted(existing - set(wanted))
        for start in range(0, len(gone), 500):
            session.execute(
                delete(RelayRecipient).where(
                    RelayRecipient.domain_id == domain_id,
                    RelayRecipient.local_part.in_(gone[start : start + 500]),
                )
            )
        removed = len(gone)
    session.flush()
    summary = ImportSummary(added=len(new), already_listed=len(wanted) - len(new), removed=removed)
    audit(
        session,
        actor=actor,
        action="relay.recipient_import",
        object_type="domain",
        object_id=domain_id,
        object_name=relay.domain.name,
        detail=f"added {summary.added}, already listed {summary.already_listed}, "
        f"removed {summary.removed}",
    )
    return summary


def export_recipients_csv(session: Session, *, domain_id: int) -> str:
    """A CSV with a header ``address`` and one full address per row (imports again as is)."""
    relay = get_relay(session, domain_id=domain_id)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["address"])
    for local in session.scalars(
        select(RelayRecipient.local_part)
        .where(RelayRecipient.domain_id == domain_id)
        .order_by(RelayRecipient.local_part)
    ):
        writer.writerow(safe_row([f"{local}@{relay.domain.name}"]))
    return out.getvalue()
