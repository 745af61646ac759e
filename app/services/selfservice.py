"""Mailbox self-service use cases: forwarding, auto-reply, own password, usage (issue 15).

Every door calls these: the user's /me area, the operator portal, the API and the CLI; the
actor differs, the rules do not. Each change is audited; nothing here commits.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import ValidationError
from app.models import Alias, AliasTarget, AutoReply, Domain, Mailbox, MailboxForward, utcnow
from app.passwords import hash_password, verify_password
from app.services.addresses import normalise_address
from app.services.audit import Actor, audit
from app.services.mailboxes import check_password, find_mailbox, get_mailbox
from app.services.queue import clean_remote_address

MAX_SUBJECT = 200
MAX_BODY = 10_000


@dataclass(frozen=True, slots=True)
class ForwardView:
    address: str
    keep_copy: bool
    hosted: bool


@dataclass(frozen=True, slots=True)
class AutoReplyView:
    enabled: bool
    subject: str
    body: str
    starts_on: dt.date | None
    ends_on: dt.date | None


def _hosted_domain(session: Session, domain: str) -> bool:
    return session.scalar(select(Domain.id).where(Domain.name == domain)) is not None


def clean_forward_address(session: Session, *, mailbox: Mailbox, address: str) -> tuple[str, bool]:
    """The forwarding address as stored, and whether it is hosted here. Hosted addresses are
    normalised like every mailbox lookup; remote ones keep their local part's case."""
    address = address.strip()
    if not address:
        raise ValidationError("enter the address to forward to", field="forward_to")
    remote = clean_remote_address(address, field="forward_to")
    domain = remote.rpartition("@")[2]
    if _hosted_domain(session, domain):
        hosted = normalise_address(address, field="forward_to")
        if hosted == mailbox.address:
            raise ValidationError("a mailbox cannot forward to itself", field="forward_to")
        return hosted, True
    return remote, False


def get_forward(
    session: Session, *, mailbox_id: int, actor: Actor | None = None
) -> ForwardView | None:
    """The mailbox's forwarding (None: none). With an ``actor``, another customer's mailbox
    is "not found" (app/services/tenancy.py)."""
    if actor is not None:
        get_mailbox(session, mailbox_id=mailbox_id, actor=actor)
    row = session.get(MailboxForward, mailbox_id)
    if row is None:
        return None
    hosted = _hosted_domain(session, row.address.rpartition("@")[2])
    return ForwardView(row.address, row.keep_copy, hosted)


def set_forward(
    session: Session, *, actor: Actor, mailbox_id: int, address: str, keep_copy: bool
) -> ForwardView:
    mailbox = get_mailbox(session, mailbox_id=mailbox_id, actor=actor)
    clean, hosted = clean_forward_address(session, mailbox=mailbox, address=address)
    row = session.get(MailboxForward, mailbox_id)
    if row is None:
        row = MailboxForward(mailbox_id=mailbox_id, address=clean, keep_copy=keep_copy)
        session.add(row)
    row.address, row.keep_copy, row.updated_at = clean, keep_copy, utcnow()
    session.flush()
    audit(
        session,
        actor=actor,
        action="mailbox.forward",
        object_type="mailbox",
        object_id=mailbox.id,
        object_name=mailbox.address,
        detail=f"to {clean} ({'keep a copy' if keep_copy else 'no copy'})",
    )
    return ForwardView(clean, keep_copy, hosted)


def clear_forward(session: Session, *, actor: Actor, mailbox_id: int) -> bool:
    """Remove the forwarding; False when there was none."""
    mailbox = get_mailbox(session, mailbox_id=mailbox_id, actor=actor)
    row = session.get(MailboxForward, mailbox_id)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    audit(
        session,
        actor=actor,
        action="mailbox.forward_cleared",
        object_type="mailbox",
        object_id=mailbox.id,
        object_name=mailbox.address,
    )
    return True


def _view(row: AutoReply) -> AutoReplyView:
    return AutoReplyView(row.enabled, row.subject, row.body, row.starts_on, row.ends_on)


def get_auto_reply(
    session: Session, *, mailbox_id: int, actor: Actor | None = None
) -> AutoReplyView | None:
    """The mailbox's auto-reply (None: none); ``actor`` checked as in ``get_forward``."""
    if actor is not None:
        get_mailbox(session, mailbox_id=mailbox_id, actor=actor)
    row = session.get(AutoReply, mailbox_id)
    return None if row is None else _view(row)


def set_auto_reply(
    session: Session,
    *,
    actor: Actor,
    mailbox_id: int,
    subject: str,
    body: str,
    starts_on: dt.date | None = None,
    ends_on: dt.date | None = None,
    enabled: bool = True,
) -> AutoReplyView:
    mailbox = get_mailbox(session, mailbox_id=mailbox_id, actor=actor)
    subject = subject.strip()
    if not subject:
        raise ValidationError("enter a subject for the auto-reply", field="subject")
    if len(subject) > MAX_SUBJECT or any(ord(c) < 0x20 or ord(c) == 0x7F for c in subject):
        raise ValidationError(
            f"the subject must be one line of at most {MAX_SUBJECT} characters", field="subject"
        )
    body = body.replace("\r\n", "\n").strip("\n")
    if not body.strip():
        raise ValidationError("enter the text of the auto-reply", field="body")
    if len(body) > MAX_BODY or "\x00" in body:
        raise ValidationError(f"the text may have at most {MAX_BODY} characters", field="body")
    if starts_on is not None and ends_on is not None and ends_on < starts_on:
        raise ValidationError("the end date is before the start date", field="ends_on")
    row = session.get(AutoReply, mailbox_id)
    if row is None:
        row = AutoReply(mailbox_id=mailbox_id, subject=subject, body=body)
        session.add(row)
    row.subject, row.body, row.enabled = subject, body, enabled
    row.starts_on, row.ends_on, row.updated_at = starts_on, ends_on, utcnow()
    session.flush()
    window = f"{starts_on or 'now'} to {ends_on or 'open end'}"
    audit(
        session,
        actor=actor,
        action="mailbox.auto_reply",
        object_type="mailbox",
        object_id=mailbox.id,
        object_name=mailbox.address,
        detail=f"{'on' if enabled else 'off'}, {window}",
    )
    return _view(row)


def clear_auto_reply(session: Session, *, actor: Actor, mailbox_id: int) -> bool:
    """Remove the auto-reply; False when there was none."""
    mailbox = get_mailbox(session, mailbox_id=mailbox_id, actor=actor)
    row = session.get(AutoReply, mailbox_id)
    if row is None:
        return False
    session.delete(row)
    session.flush()
    audit(
        session,
        actor=actor,
        action="mailbox.auto_reply_cleared",
        object_type="mailbox",
        object_id=mailbox.id,
        object_name=mailbox.address,
    )
    return True


def aliases_of(session: Session, *, address: str) -> list[str]:
    """Aliases that name ``address`` directly among their targets."""
    rows = session.execute(
        select(Alias.local_part, Domain.name)
        .join(AliasTarget, AliasTarget.alias_id == Alias.id)
        .join(Domain, Alias.domain_id == Domain.id)
        .where(AliasTarget.address == address)
        .order_by(Domain.name, Alias.local_part)
    ).all()
    return [f"{local}@{domain}" for local, domain in rows]


def login_mailbox(session: Session, *, address: str) -> Mailbox | None:
    """The mailbox a self-service login names (None for an invalid or unknown address)."""
    try:
        return find_mailbox(session, address=address)
    except ValidationError:
        return None


def change_own_password(
    session: Session, *, actor: Actor, mailbox_id: int, current: str, new: str, repeat: str
) -> bool:
    """The user's own password change: False when ``current`` is wrong (nothing changed)."""
    mailbox = get_mailbox(session, mailbox_id=mailbox_id)
    ok, _ = verify_password(current, mailbox.password_hash)
    if not ok:
        return False
    check_password(new, field="new_password")
    if new != repeat:
        raise ValidationError("the two new passwords differ", field="repeat_password")
    mailbox.password_hash = hash_password(new)
    session.flush()
    audit(
        session,
        actor=actor,
        action="mailbox.password",
        object_type="mailbox",
        object_id=mailbox.id,
        object_name=mailbox.address,
        detail="changed by the user",
    )
    return True
