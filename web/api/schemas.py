"""Pydantic request/response schemas of the API (suffixes Create / Update / Public)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, StrictBool, StrictInt

from app.maildir import MailboxRef, MaildirError, MaildirStore
from app.models import Alias, Customer, Domain, DomainAlias, LifecycleEvent, Mailbox
from app.services.addresses import domain_to_unicode
from web.params import StrictId

Status = Literal["active", "suspended"]
# Money and prices travel as decimal strings ("4.99"): JSON numbers are binary floats.
Money = Annotated[Decimal, PlainSerializer(lambda d: str(d), return_type=str, when_used="json")]
# Request numbers and flags are strict (issue 10): a JSON integer is an integer and a JSON
# boolean a flag; ``true`` is not customer 1, ``1.5`` or ``"1"`` not a quota.
ByteCount = Annotated[StrictInt, Field(ge=0, le=2**62)]
MailboxLimit = Annotated[StrictInt, Field(ge=0, le=10_000_000)]
PRICE_EXPONENT = Decimal("0.0001")  # prices are stored with 4 decimals (Numeric(12, 4))


def price(value: Decimal) -> Decimal:
    """The same text for a price whether it comes from the request or the database."""
    return value.quantize(PRICE_EXPONENT)


class _Input(BaseModel):
    # Unknown fields are refused, so a typo ("quota": ...) is a 422, not a silent no-op.
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------ customers
class CustomerCreate(_Input):
    name: str = Field(min_length=1, max_length=200)
    price_per_mailbox: Decimal = Field(
        default=Decimal("0"),
        ge=0,
        max_digits=12,
        decimal_places=4,
        description="Price of one mailbox for a whole billing period, in `currency`.",
    )
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$", description="ISO 4217 code.")
    price_per_relay_domain: Decimal = Field(
        default=Decimal("0"),
        ge=0,
        max_digits=12,
        decimal_places=4,
        description="Price of one relay domain for a whole billing period, prorated by day.",
    )


class CustomerUpdate(_Input):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    price_per_mailbox: Decimal | None = Field(default=None, ge=0, max_digits=12, decimal_places=4)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    price_per_relay_domain: Decimal | None = Field(
        default=None, ge=0, max_digits=12, decimal_places=4
    )


class CustomerPublic(BaseModel):
    id: int
    name: str
    status: Status
    price_per_mailbox: Money
    currency: str
    created_at: dt.datetime
    price_per_relay_domain: Money

    @classmethod
    def of(cls, c: Customer) -> CustomerPublic:
        return cls(
            id=c.id,
            name=c.name,
            status=c.status,
            price_per_mailbox=price(c.price_per_mailbox),
            currency=c.currency,
            created_at=c.created_at,
            price_per_relay_domain=price(c.price_per_relay_domain),
        )


# ------------------------------------------------------------------------------ domains
class DomainCreate(_Input):
    customer_id: StrictId
    name: str = Field(min_length=1, max_length=253, description="Unicode or IDNA form.")
    max_mailboxes: MailboxLimit | None = None
    default_quota_bytes: ByteCount | None = None
    total_quota_bytes: ByteCount | None = None


class DomainUpdate(_Input):
    """Omitted fields stay; ``null`` clears max_mailboxes, total_quota_bytes, catchall_target."""

    max_mailboxes: MailboxLimit | None = None
    default_quota_bytes: ByteCount | None = Field(
        default=None, description="null or omitted: unchanged."
    )
    total_quota_bytes: ByteCount | None = None
    catchall_target: str | None = Field(default=None, max_length=320)


class DomainPublic(BaseModel):
    id: int
    name: str
    name_unicode: str
    customer_id: int
    status: Status
    max_mailboxes: int | None
    default_quota_bytes: int
    total_quota_bytes: int | None
    catchall_target: str | None
    alias_domains: list[str]
    created_at: dt.datetime

    @classmethod
    def of(cls, d: Domain) -> DomainPublic:
        return cls(
            id=d.id,
            name=d.name,
            name_unicode=domain_to_unicode(d.name),
            customer_id=d.customer_id,
            status=d.status,
            max_mailboxes=d.max_mailboxes,
            default_quota_bytes=d.default_quota_bytes,
            total_quota_bytes=d.total_quota_bytes,
            catchall_target=d.catchall_target,
            alias_domains=sorted(a.name for a in d.domain_aliases),
            created_at=d.created_at,
        )


class DomainAliasCreate(_Input):
    name: str = Field(min_length=1, max_length=253, description="The alias domain's name.")


class DomainAliasPublic(BaseModel):
    id: int
    name: str
    target_domain_id: int
    target_domain: str
    created_at: dt.datetime

    @classmethod
    def of(cls, a: DomainAlias) -> DomainAliasPublic:
        return cls(
            id=a.id,
            name=a.name,
            target_domain_id=a.target_domain_id,
            target_domain=a.target_domain.name,
            created_at=a.created_at,
        )


# ------------------------------------------------------------------------------ mailboxes
class MailboxCreate(_Input):
    """Exactly one of ``password`` / ``password_hash`` (a hash in a supported scheme)."""

    address: str = Field(min_length=3, max_length=320)
    password: str | None = Field(default=None, max_length=1024)
    password_hash: str | None = Field(default=None, max_length=255)
    quota_bytes: ByteCount | None = Field(default=None, description="Default: the domain's.")
    pop3_enabled: StrictBool = True


class MailboxUpdate(_Input):
    quota_bytes: ByteCount | None = None
    pop3_enabled: StrictBool | None = None
    password: str | None = Field(default=None, max_length=1024)
    password_hash: str | None = Field(default=None, max_length=255)


class UsagePublic(BaseModel):
    bytes: int = Field(description="Octets stored in the Maildir.")
    messages: int


class MailboxPublic(BaseModel):
    id: int
    address: str
    local_part: str
    domain: str
    domain_id: int
    customer_id: int
    status: Status
    quota_bytes: int
    pop3_enabled: bool
    usage: UsagePublic | None = Field(description="null if the Maildir could not be read.")
    last_login_at: dt.datetime | None
    created_at: dt.datetime

    @classmethod
    def of(cls, m: Mailbox, store: MaildirStore) -> MailboxPublic:
        try:
            used = store.usage(MailboxRef.of(m))
            usage: UsagePublic | None = UsagePublic(bytes=used.bytes, messages=used.messages)
        except (MaildirError, OSError):
            usage = None
        return cls(
            id=m.id,
            address=m.address,
            local_part=m.local_part,
            domain=m.domain.name,
            domain_id=m.domain_id,
            customer_id=m.domain.customer_id,
            status=m.status,
            quota_bytes=m.quota_bytes,
            pop3_enabled=m.pop3_enabled,
            usage=usage,
            last_login_at=m.last_login_at,
            created_at=m.created_at,
        )


# ------------------------------------------------------------------------------ aliases
class AliasCreate(_Input):
    address: str = Field(min_length=3, max_length=320)
    targets: list[Annotated[str, Field(min_length=3, max_length=320)]] = Field(
        min_length=1, max_length=1000
    )


class AliasUpdate(_Input):
    targets: list[Annotated[str, Field(min_length=3, max_length=320)]] = Field(
        min_length=1, max_length=1000
    )


class AliasPublic(BaseModel):
    id: int
    address: str
    domain: str
    domain_id: int
    customer_id: int
    targets: list[str]
    created_at: dt.datetime

    @classmethod
    def of(cls, a: Alias) -> AliasPublic:
        return cls(
            id=a.id,
            address=a.address,
            domain=a.domain.name,
            domain_id=a.domain_id,
            customer_id=a.domain.customer_id,
            targets=[t.address for t in a.targets],
            created_at=a.created_at,
        )


# ------------------------------------------------------------------------------ billing
class UsageLinePublic(BaseModel):
    domain: str
    mailboxes_active_end: int
    mailboxes_suspended_end: int
    peak_mailboxes: int
    mailbox_days: int
    suspended_days: int
    storage_bytes: int
    storage_messages: int
    amount: Money | None


class RelayUsageLinePublic(BaseModel):
    """One relay domain: billed per domain, prorated by day like a mailbox."""

    domain: str
    relay_domain_days: int = Field(description="Days on which it was active at any instant.")
    suspended_days: int
    active_end: bool
    amount: Money | None


class CustomerUsagePublic(BaseModel):
    customer_id: int
    customer_name: str | None = Field(description="null once the customer was deleted.")
    currency: str | None
    price_per_mailbox: Money | None
    mailboxes_active_end: int
    mailboxes_suspended_end: int
    peak_mailboxes: int
    mailbox_days: int
    suspended_days: int
    storage_bytes: int
    storage_messages: int
    amount: Money | None = Field(
        description="Sum of the line items' amounts, relay-domain line items included."
    )
    line_items: list[UsageLinePublic]
    price_per_relay_domain: Money | None
    relay_domains_active_end: int
    relay_domain_days: int
    relay_line_items: list[RelayUsageLinePublic]


class UsageReportPublic(BaseModel):
    from_: dt.date = Field(alias="from", description="First day (inclusive).")
    to: dt.date = Field(description="Day after the last day (exclusive).")
    days: int
    generated_at: dt.datetime
    customers: list[CustomerUsagePublic]

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class EventPublic(BaseModel):
    id: int = Field(description="Stable, increasing in commit order.")
    occurred_at: dt.datetime
    entity: Literal["mailbox", "domain", "relay_domain"]
    entity_id: int
    action: Literal["created", "suspended", "resumed", "deleted"]
    customer_id: int
    domain: str
    address: str | None

    @classmethod
    def of(cls, e: LifecycleEvent) -> EventPublic:
        return cls(
            id=e.id,
            occurred_at=e.occurred_at,
            entity=e.entity,
            entity_id=e.entity_id,
            action=e.action,
            customer_id=e.customer_id,
            domain=e.domain_name,
            address=e.address,
        )


class EventPage(BaseModel):
    items: list[EventPublic]
    next_cursor: int = Field(
        description="Pass as `after` next time: the last id returned (or the `after` given)."
    )
