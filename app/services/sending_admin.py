"""The operator's side of the sending controls: set may_send and limits, read usage and flag."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import ValidationError
from app.models import (
    SEND_METRIC_MESSAGES,
    SEND_METRIC_RECIPIENTS,
    SEND_SCOPE_CUSTOMER,
    SEND_SCOPE_MAILBOX,
    Customer,
    Mailbox,
    SendingCounter,
)
from app.services.audit import Actor, audit
from app.services.customers import get_customer
from app.services.mailboxes import get_mailbox
from app.services.sending import DEFAULT_LIMITS, SendingLimits, current_count, sending_limited
from app.services.tenancy import isp_only

# Far above any sane limit (a mailbox sending 10 million messages an hour is no mailbox), and
# well inside a 32-bit INTEGER column.
MAX_LIMIT = 10_000_000
# Words a door accepts for "no own limit: inherit the platform default".
INHERIT_WORDS = ("", "default", "inherit")


class Unset(enum.Enum):
    """Leave a limit as it is (None means: clear it, inherit the default)."""

    UNSET = "unset"


UNSET = Unset.UNSET
LimitChange = int | None | Unset


def check_limit(value: int | None, *, field: str) -> int | None:
    """A limit is None (inherit) or a whole number from 1 to MAX_LIMIT."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{field} must be a whole number, not {value!r}", field=field)
    if value < 1:
        raise ValidationError(
            f"{field} must be at least 1, not {value} (to stop a mailbox sending, turn off "
            "may_send)",
            field=field,
        )
    if value > MAX_LIMIT:
        raise ValidationError(f"{field} must be at most {MAX_LIMIT}, not {value}", field=field)
    return value


def parse_limit(text: str, *, field: str) -> int | None:
    """A limit typed by a person (CLI option, form field): a number, or empty / "default" /
    "inherit" for the platform default."""
    cleaned = text.strip().replace("_", "").replace(",", "")
    if cleaned.lower() in INHERIT_WORDS:
        return None
    try:
        value = int(cleaned, 10)
    except ValueError:
        raise ValidationError(
            f"{field} must be a whole number or 'default', not {text!r}", field=field
        ) from None
    return check_limit(value, field=field)


def _change(changes: list[str], name: str, old: object, new: object) -> bool:
    if old == new:
        return False
    changes.append(
        f"{name}: {'default' if old is None else old} -> {'default' if new is None else new}"
    )
    return True


@isp_only("change sending limits")
def set_mailbox_sending(
    session: Session,
    *,
    actor: Actor,
    mailbox_id: int,
    may_send: bool | None = None,
    max_messages_per_hour: LimitChange = UNSET,
    max_recipients_per_day: LimitChange = UNSET,
    clear_flag: bool = False,
) -> Mailbox:
    """Change a mailbox's sending controls (validated first: nothing changes on an error),
    audited as ``mailbox.sending_changed`` with what changed."""
    if may_send is not None and not isinstance(may_send, bool):
        raise ValidationError("may_send must be true or false", field="may_send")
    if not isinstance(max_messages_per_hour, Unset):
        check_limit(max_messages_per_hour, field="max_messages_per_hour")
    if not isinstance(max_recipients_per_day, Unset):
        check_limit(max_recipients_per_day, field="max_recipients_per_day")
    mailbox = get_mailbox(session, mailbox_id=mailbox_id)
    changes: list[str] = []
    if may_send is not None and _change(changes, "may_send", mailbox.may_send, may_send):
        mailbox.may_send = may_send
    if not isinstance(max_messages_per_hour, Unset) and _change(
        changes, "max_messages_per_hour", mailbox.max_messages_per_hour, max_messages_per_hour
    ):
        mailbox.max_messages_per_hour = max_messages_per_hour
    if not isinstance(max_recipients_per_day, Unset) and _change(
        changes, "max_recipients_per_day", mailbox.max_recipients_per_day, max_recipients_per_day
    ):
        mailbox.max_recipients_per_day = max_recipients_per_day
    if clear_flag and mailbox.sending_limited_until is not None:
        changes.append("sending limited flag cleared")
        mailbox.sending_limited_since = None
        mailbox.sending_limited_until = None
        mailbox.sending_limited_reason = None
    if changes:
        audit(
            session,
            actor=actor,
            action="mailbox.sending_changed",
            object_type="mailbox",
            object_id=mailbox.id,
            object_name=mailbox.address,
            detail="; ".join(changes),
        )
    session.flush()
    return mailbox


@isp_only("change sending limits")
def set_customer_limits(
    session: Session,
    *,
    actor: Actor,
    customer_id: int,
    max_messages_per_hour: LimitChange = UNSET,
    max_recipients_per_day: LimitChange = UNSET,
) -> Customer:
    """Change a customer's sending limits (over all its mailboxes), audited as
    ``customer.sending_changed``."""
    if not isinstance(max_messages_per_hour, Unset):
        check_limit(max_messages_per_hour, field="max_messages_per_hour")
    if not isinstance(max_recipients_per_day, Unset):
        check_limit(max_recipients_per_day, field="max_recipients_per_day")
    customer = get_customer(session, customer_id=customer_id)
    changes: list[str] = []
    if not isinstance(max_messages_per_hour, Unset) and _change(
        changes, "max_messages_per_hour", customer.max_messages_per_hour, max_messages_per_hour
    ):
        customer.max_messages_per_hour = max_messages_per_hour
    if not isinstance(max_recipients_per_day, Unset) and _change(
        changes, "max_recipients_per_day", customer.max_recipients_per_day, max_recipients_per_day
    ):
        customer.max_recipients_per_day = max_recipients_per_day
    if changes:
        audit(
            session,
            actor=actor,
            action="customer.sending_changed",
            object_type="customer",
            object_id=customer.id,
            object_name=customer.name,
            detail="; ".join(changes),
        )
    session.flush()
    return customer


@dataclass(frozen=True, slots=True)
class Usage:
    """One limit as a person reads it: own setting (None = default), effective limit, used."""

    own: int | None
    limit: int
    used: int


@dataclass(frozen=True, slots=True)
class SendingStatus:
    may_send: bool
    messages_per_hour: Usage
    recipients_per_day: Usage
    limited: bool
    limited_since: dt.datetime | None
    limited_until: dt.datetime | None
    limited_reason: str | None


def _used(session: Session, scope: str, scope_id: int, metric: str, now: dt.datetime) -> int:
    row = session.get(SendingCounter, (scope, scope_id, metric))
    return 0 if row is None else current_count(row.window_start, row.count, metric, now)


def mailbox_sending_status(
    session: Session, *, mailbox_id: int, now: dt.datetime, limits: SendingLimits = DEFAULT_LIMITS
) -> SendingStatus:
    mailbox = get_mailbox(session, mailbox_id=mailbox_id)
    own_m, own_r = mailbox.max_messages_per_hour, mailbox.max_recipients_per_day
    return SendingStatus(
        may_send=mailbox.may_send,
        messages_per_hour=Usage(
            own_m,
            limits.mailbox_messages_per_hour if own_m is None else own_m,
            _used(session, SEND_SCOPE_MAILBOX, mailbox.id, SEND_METRIC_MESSAGES, now),
        ),
        recipients_per_day=Usage(
            own_r,
            limits.mailbox_recipients_per_day if own_r is None else own_r,
            _used(session, SEND_SCOPE_MAILBOX, mailbox.id, SEND_METRIC_RECIPIENTS, now),
        ),
        limited=sending_limited(mailbox, now=now),
        limited_since=mailbox.sending_limited_since,
        limited_until=mailbox.sending_limited_until,
        limited_reason=mailbox.sending_limited_reason,
    )


def customer_sending_usage(
    session: Session, *, customer_id: int, now: dt.datetime, limits: SendingLimits = DEFAULT_LIMITS
) -> tuple[Usage, Usage]:
    """(messages this hour, recipients today) of all the customer's mailboxes together."""
    customer = get_customer(session, customer_id=customer_id)
    own_m, own_r = customer.max_messages_per_hour, customer.max_recipients_per_day
    return (
        Usage(
            own_m,
            limits.customer_messages_per_hour if own_m is None else own_m,
            _used(session, SEND_SCOPE_CUSTOMER, customer.id, SEND_METRIC_MESSAGES, now),
        ),
        Usage(
            own_r,
            limits.customer_recipients_per_day if own_r is None else own_r,
            _used(session, SEND_SCOPE_CUSTOMER, customer.id, SEND_METRIC_RECIPIENTS, now),
        ),
    )


def limited_mailbox_ids(session: Session, *, ids: list[int], now: dt.datetime) -> set[int]:
    """Which of ``ids`` have their "sending limited" flag up (for lists)."""
    if not ids:
        return set()
    return set(
        session.scalars(
            select(Mailbox.id).where(Mailbox.id.in_(ids), Mailbox.sending_limited_until > now)
        )
    )
