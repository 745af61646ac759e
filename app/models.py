"""The database schema: every table of Mailhost as typed SQLAlchemy 2 models."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column, relationship
from sqlalchemy.types import DateTime, TypeDecorator

from app.db import Base

# SQLite has no 64-bit autoincrement for BIGINT; use INTEGER there (it is 64-bit anyway).
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC datetimes on every backend (SQLite would otherwise hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)  # type: ignore[no-any-return]
        return value.astimezone(dt.UTC)  # type: ignore[no-any-return]


STATUS_ACTIVE = "active"
STATUS_SUSPENDED = "suspended"
STATUSES = (STATUS_ACTIVE, STATUS_SUSPENDED)


class Customer(Base):
    """The organisation that subscribes and is billed per mailbox."""

    __tablename__ = "customers"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'suspended')", name="status"),
        # Ids are never reused (SQLite would hand a deleted row's id out again); lifecycle
        # events and audit entries refer to them after deletion.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(16), default=STATUS_ACTIVE)
    price_per_mailbox: Mapped[Decimal] = mapped_column(Numeric(12, 4), default=Decimal("0"))
    # Per relay domain per period, prorated by day (app/services/billing_relay.py).
    price_per_relay_domain: Mapped[Decimal] = mapped_column(
        Numeric(12, 4), default=Decimal("0"), server_default="0"
    )
    currency: Mapped[str] = mapped_column(String(3), default="EUR")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Sending limits over all the customer's mailboxes; None = the platform default
    # (Settings.send_customer_*; see app/services/sending.py).
    max_messages_per_hour: Mapped[int | None] = mapped_column(Integer, default=None)
    max_recipients_per_day: Mapped[int | None] = mapped_column(Integer, default=None)

    domains: Mapped[list[Domain]] = relationship(back_populates="customer")


DOMAIN_HOSTED = "hosted"  # mailboxes on this platform
DOMAIN_RELAY = "relay"  # the "SMTP mail connection": mail is forwarded to the customer's server
DOMAIN_KINDS = (DOMAIN_HOSTED, DOMAIN_RELAY)


class Domain(Base):
    """A mail domain; ``name`` is lower-case IDNA (punycode). ``kind`` 'hosted' has mailboxes,
    'relay' forwards everything to a next hop (its settings: ``relay``, a RelayDomain)."""

    __tablename__ = "domains"
    __table_args__ = (
        CheckConstraint("status IN ('active', 'suspended')", name="status"),
        CheckConstraint("kind IN ('hosted', 'relay')", name="kind"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default=STATUS_ACTIVE)
    max_mailboxes: Mapped[int | None] = mapped_column(Integer, default=None)
    default_quota_bytes: Mapped[int] = mapped_column(BigInteger, default=1024**3)
    total_quota_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # Full address (local@domain) that receives mail for unknown users of this domain.
    catchall_target: Mapped[str | None] = mapped_column(String(320), default=None, index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(8), default=DOMAIN_HOSTED, server_default="hosted")

    customer: Mapped[Customer] = relationship(back_populates="domains")
    relay: Mapped[RelayDomain | None] = relationship(
        back_populates="domain", uselist=False, cascade="all, delete-orphan", passive_deletes=True
    )
    mailboxes: Mapped[list[Mailbox]] = relationship(back_populates="domain")
    aliases: Mapped[list[Alias]] = relationship(back_populates="domain")
    domain_aliases: Mapped[list[DomainAlias]] = relationship(back_populates="target_domain")


RELAY_TLS_OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered (the queue's default)
RELAY_TLS_REQUIRED = "required"  # no STARTTLS, or a failed handshake: deferred, never clear
RELAY_TLS_POLICIES = (RELAY_TLS_OPPORTUNISTIC, RELAY_TLS_REQUIRED)
RELAY_MODE_LIST = "list"  # only the listed recipients (relay_recipients); others 550 5.1.1
RELAY_MODE_VERIFY = "verify"  # a recipient callout (RCPT probe) to the next hop, cached
RELAY_MODE_ANY = "any"  # everything accepted (invites backscatter)
RELAY_MODES = (RELAY_MODE_LIST, RELAY_MODE_VERIFY, RELAY_MODE_ANY)
RELAY_DEFAULT_MAX_AGE = 10 * 86400  # a customer server may be off over a long weekend
RELAY_DEFAULT_CALLOUT_CACHE = 3600


class RelayDomain(Base):
    """The relay settings of a Domain of kind 'relay' (one row per such domain).

    ``next_hop`` is ``host``, ``host:port``, ``[address]:port`` or ``mx:hostname`` (deliver
    to the MX hosts of ``hostname``; see app/services/relay_hop.py). ``flush_networks`` are
    space-separated networks (CIDR) allowed to ETRN. ``held``: nothing is delivered until
    released; ``hold_reason`` says why (an operator's note, or a detected mail loop)."""

    __tablename__ = "relay_domains"
    __table_args__ = (
        CheckConstraint("tls_policy IN ('opportunistic', 'required')", name="tls_policy"),
        CheckConstraint("recipient_mode IN ('list', 'verify', 'any')", name="recipient_mode"),
        CheckConstraint("max_queue_age > 0", name="max_queue_age_positive"),
        CheckConstraint("callout_cache_seconds >= 0", name="callout_cache_nonnegative"),
    )

    domain_id: Mapped[int] = mapped_column(
        ForeignKey("domains.id", ondelete="CASCADE"), primary_key=True
    )
    next_hop: Mapped[str] = mapped_column(String(300))
    tls_policy: Mapped[str] = mapped_column(String(16), default=RELAY_TLS_OPPORTUNISTIC)
    max_queue_age: Mapped[int] = mapped_column(Integer, default=RELAY_DEFAULT_MAX_AGE)  # seconds
    held: Mapped[bool] = mapped_column(Boolean, default=False)
    hold_reason: Mapped[str | None] = mapped_column(String(500), default=None)
    recipient_mode: Mapped[str] = mapped_column(String(8), default=RELAY_MODE_LIST)
    callout_cache_seconds: Mapped[int] = mapped_column(Integer, default=RELAY_DEFAULT_CALLOUT_CACHE)
    flush_networks: Mapped[str] = mapped_column(String(2000), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    domain: Mapped[Domain] = relationship(back_populates="relay")

    @property
    def flush_network_list(self) -> list[str]:
        return self.flush_networks.split()


class RelayRecipient(Base):
    """A valid recipient of a relay domain in mode 'list'; ``local_part`` is lower-case."""

    __tablename__ = "relay_recipients"
    __table_args__ = (UniqueConstraint("domain_id", "local_part"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    local_part: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class DomainAlias(Base):
    """An alias domain: mail to user@alias goes to user@target (same users)."""

    __tablename__ = "domain_aliases"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    target_domain_id: Mapped[int] = mapped_column(
        ForeignKey("domains.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    target_domain: Mapped[Domain] = relationship(back_populates="domain_aliases")


class Mailbox(Base):
    """One person's mailbox. Deleting it keeps its lifecycle events (billing history)."""

    __tablename__ = "mailboxes"
    __table_args__ = (
        UniqueConstraint("domain_id", "local_part"),
        CheckConstraint("status IN ('active', 'suspended')", name="status"),
        CheckConstraint("quota_bytes >= 0", name="quota_nonnegative"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id"), index=True)
    local_part: Mapped[str] = mapped_column(String(64))
    password_hash: Mapped[str] = mapped_column(String(255))
    quota_bytes: Mapped[int] = mapped_column(BigInteger)  # 0 means unlimited (as in Dovecot)
    status: Mapped[str] = mapped_column(String(16), default=STATUS_ACTIVE)
    pop3_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    # Submission (app/services/sending.py): may this mailbox send at all, its own limits
    # (None = the platform default, Settings.send_mailbox_*), and the visible "sending
    # limited" flag: set when a limit refused a message, shown while ``until`` is ahead.
    may_send: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    max_messages_per_hour: Mapped[int | None] = mapped_column(Integer, default=None)
    max_recipients_per_day: Mapped[int | None] = mapped_column(Integer, default=None)
    sending_limited_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    sending_limited_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    sending_limited_reason: Mapped[str | None] = mapped_column(String(300), default=None)

    domain: Mapped[Domain] = relationship(back_populates="mailboxes")

    @property
    def address(self) -> str:
        return f"{self.local_part}@{self.domain.name}"


class Alias(Base):
    """One address delivering to one or more addresses (mailboxes or other aliases)."""

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("domain_id", "local_part"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id"), index=True)
    local_part: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    domain: Mapped[Domain] = relationship(back_populates="aliases")
    targets: Mapped[list[AliasTarget]] = relationship(
        back_populates="alias", cascade="all, delete-orphan", order_by="AliasTarget.address"
    )

    @property
    def address(self) -> str:
        return f"{self.local_part}@{self.domain.name}"


class AliasTarget(Base):
    __tablename__ = "alias_targets"
    __table_args__ = (UniqueConstraint("alias_id", "address"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    alias_id: Mapped[int] = mapped_column(ForeignKey("aliases.id", ondelete="CASCADE"))
    # Normalised full address: local@idna-domain (indexed: deletions find who names it).
    address: Mapped[str] = mapped_column(String(320), index=True)

    alias: Mapped[Alias] = relationship(back_populates="targets")


ROLE_ADMIN = "admin"
ROLE_SUPPORT = "support"


class Operator(Base):
    """An ISP staff member who logs in to the portal."""

    __tablename__ = "operators"
    __table_args__ = (CheckConstraint("role IN ('admin', 'support')", name="role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=ROLE_ADMIN)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)


SCOPE_PROVISIONING = "provisioning"
SCOPE_READ = "read"
SCOPE_BILLING_READ = "billing:read"
# The outbound queue: list and show messages (senders and recipients of every customer),
# retry, hold, release and delete them. Separate from read/provisioning on purpose.
SCOPE_QUEUE = "queue"
SCOPES = (SCOPE_PROVISIONING, SCOPE_READ, SCOPE_BILLING_READ, SCOPE_QUEUE)
# What a token bound to a customer may hold (the queue holds every customer's mail).
CUSTOMER_SCOPES = (SCOPE_PROVISIONING, SCOPE_READ, SCOPE_BILLING_READ)


class ApiToken(Base):
    """A bearer token for the REST API; only a SHA-256 of the secret is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    # First characters of the token, stored in clear to find the row and show it in lists.
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[str] = mapped_column(String(200))  # space-separated
    owner: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    # Set: the token belongs to that customer and sees only its objects (issue 15); NULL: an
    # ISP token. Deleting the customer deletes its tokens.
    customer_id: Mapped[int | None] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), default=None, index=True
    )

    @property
    def scope_list(self) -> list[str]:
        return self.scopes.split()


class LifecycleEvent(Base):
    """Append-only: a mailbox or domain was created / suspended / resumed / deleted.

    Denormalised on purpose (address, domain, customer copied in) so that billing history
    survives deletion of the objects. Ids are assigned in commit order (see services.events).
    """

    __tablename__ = "lifecycle_events"
    __table_args__ = (
        CheckConstraint("entity IN ('mailbox', 'domain', 'relay_domain')", name="entity"),
        CheckConstraint("action IN ('created', 'suspended', 'resumed', 'deleted')", name="action"),
        Index("ix_lifecycle_events_customer_time", "customer_id", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    entity: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))
    customer_id: Mapped[int] = mapped_column(Integer)
    domain_name: Mapped[str] = mapped_column(String(253))
    address: Mapped[str | None] = mapped_column(String(320), default=None)


class AuditEntry(Base):
    """Who (operator, token, cli, system) did what to which object, when, from where."""

    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_object", "object_type", "object_id"),
        Index("ix_audit_log_actor", "actor_type", "actor"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    actor_type: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    object_type: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str | None] = mapped_column(String(64), default=None)
    object_name: Mapped[str | None] = mapped_column(String(320), default=None)
    detail: Mapped[str | None] = mapped_column(Text, default=None)
    remote_addr: Mapped[str | None] = mapped_column(String(64), default=None)
    # The customer whose administrator acted (None for the ISP's staff, tokens, cli, system):
    # what a customer administrator's own audit view shows (app/services/tenancy.py).
    customer_id: Mapped[int | None] = mapped_column(Integer, default=None, index=True)


class MaildropLease(Base):
    """A POP3 maildrop lock as a lease row, shared by every host using the database."""

    __tablename__ = "maildrop_leases"

    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
    )
    holder: Mapped[str] = mapped_column(String(200))
    acquired_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class WebSession(Base):
    """A portal login session; only a hash of the cookie value is stored."""

    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    operator_id: Mapped[int] = mapped_column(
        ForeignKey("operators.id", ondelete="CASCADE"), index=True
    )
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    remote_addr: Mapped[str | None] = mapped_column(String(64), default=None)


class LoginCounter(Base):
    """A login-throttle budget shared by all processes and hosts (see app/services/throttle.py).

    key: 'mail:ip:192.0.2.1', 'mail:user:a@b.example', 'portal:ip:...', 'portal:user:alice'.
    ``charged`` counts failed attempts and attempts in flight; one unit drains every refill
    period, and ``drained_at`` is the moment up to which draining has been applied."""

    __tablename__ = "login_counters"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    charged: Mapped[int] = mapped_column(Integer, default=0)
    drained_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class LoginKnownAddress(Base):
    """A client network that logged in to an account successfully: it may still log in while
    that account's budget is spent by guesses from elsewhere (a botnet must not lock users out)."""

    __tablename__ = "login_known_addresses"

    account_key: Mapped[str] = mapped_column(String(400), primary_key=True)
    network: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_success_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


SEND_SCOPE_MAILBOX = "mailbox"
SEND_SCOPE_CUSTOMER = "customer"
SEND_METRIC_MESSAGES = "messages_hour"
SEND_METRIC_RECIPIENTS = "recipients_day"


class SendingCounter(Base):
    """What a mailbox or a customer sent in the current fixed window of one metric.

    One row per (scope, scope id, metric): ``count`` belongs to the window that began at
    ``window_start`` (a UTC clock hour for messages, a UTC day for recipients); a row whose
    window has passed counts as zero and is reset by the next message (see
    app/services/sending.py for why fixed windows)."""

    __tablename__ = "sending_counters"
    __table_args__ = (
        CheckConstraint("scope IN ('mailbox', 'customer')", name="scope"),
        CheckConstraint("metric IN ('messages_hour', 'recipients_day')", name="metric"),
        CheckConstraint("count >= 0", name="count_nonnegative"),
    )

    scope: Mapped[str] = mapped_column(String(16), primary_key=True)
    scope_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    metric: Mapped[str] = mapped_column(String(16), primary_key=True)
    window_start: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class IdempotencyRecord(Base):
    """A stored API response for a POST retried with the same Idempotency-Key."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("token_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(200))
    # HMAC-SHA256 under the server secret (app.services.idempotency), never a plain hash:
    # the request may carry a password.
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response_body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class DailyStat(Base):
    """Per-day counters for the dashboard (deliveries, pop3_logins), upserted by the edges."""

    __tablename__ = "daily_stats"

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class HourlyStat(Base):
    """Per-hour traffic counters for the dashboard charts (received, refused, retrieved),
    upserted in batches by the edges (app/hourly.py); ``hour`` is the UTC hour's start."""

    __tablename__ = "hourly_stats"

    hour: Mapped[dt.datetime] = mapped_column(UTCDateTime, primary_key=True)
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


class CustomerStorageDaily(Base):
    """Storage per customer, one row per UTC day, written by the dashboard's usage scan.

    No foreign key: like the lifecycle events, the history outlives a deleted customer."""

    __tablename__ = "customer_storage_daily"

    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    customer_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    messages: Mapped[int] = mapped_column(BigInteger, default=0)
    mailboxes: Mapped[int] = mapped_column(Integer, default=0)


class QueueSample(Base):
    """The outbound queue's depth by state and its oldest message's age, sampled every
    ``MAILHOST_QUEUE_SAMPLE_SECONDS`` by the periodic jobs (app/periodic.py) for the
    dashboard's 48-hour chart; ``sampled_at`` is the start of the sampling slot, so several
    processes or hosts sampling the same slot write one row. Pruned with the tracking
    retention."""

    __tablename__ = "queue_samples"

    sampled_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, primary_key=True)
    queued: Mapped[int] = mapped_column(Integer, default=0)
    deferred: Mapped[int] = mapped_column(Integer, default=0)
    held: Mapped[int] = mapped_column(Integer, default=0)
    oldest_age_seconds: Mapped[float] = mapped_column(Float, default=0.0)


# --- outbound queue ---------------------------------------------------------------------------
ORIGIN_SUBMISSION = "submission"
ORIGIN_RELAY = "relay"
ORIGIN_BOUNCE = "bounce"
ORIGIN_FORWARD = "forward"  # a mailbox's forwarding (app/delivery_rules.py)
ORIGIN_AUTOREPLY = "autoreply"  # an RFC 3834 auto-reply (app/services/autoreply.py)
ORIGINS = (ORIGIN_SUBMISSION, ORIGIN_RELAY, ORIGIN_BOUNCE, ORIGIN_FORWARD, ORIGIN_AUTOREPLY)

RCPT_QUEUED = "queued"
RCPT_DEFERRED = "deferred"
RCPT_HELD = "held"
RCPT_DELIVERED = "delivered"
RCPT_BOUNCED = "bounced"
RCPT_EXPIRED = "expired"
RCPT_STATES = (RCPT_QUEUED, RCPT_DEFERRED, RCPT_HELD, RCPT_DELIVERED, RCPT_BOUNCED, RCPT_EXPIRED)
# Rows the agent still has to act on (held ones wait for an operator).
RCPT_PENDING = (RCPT_QUEUED, RCPT_DEFERRED, RCPT_HELD)
RCPT_FINAL = (RCPT_DELIVERED, RCPT_BOUNCED, RCPT_EXPIRED)


class OutboundMessage(Base):
    """A message in the outbound queue: stored once in the spool, one row per recipient."""

    __tablename__ = "outbound_messages"
    __table_args__ = (
        CheckConstraint(
            "origin IN ('submission', 'relay', 'bounce', 'forward', 'autoreply')", name="origin"
        ),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    # The id users and logs see ("queued as 5F3A..."); random, so it reveals no volume.
    queue_id: Mapped[str] = mapped_column(String(32), unique=True)
    # The envelope sender; "" is the null reverse-path <> (a bounce: never bounced itself).
    sender: Mapped[str] = mapped_column(String(320))
    spool_id: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    origin: Mapped[str] = mapped_column(String(16))
    customer_id: Mapped[int | None] = mapped_column(
        ForeignKey("customers.id", ondelete="SET NULL"), default=None, index=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    recipients: Mapped[list[OutboundRecipient]] = relationship(
        back_populates="message",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="OutboundRecipient.id",
    )


class OutboundRecipient(Base):
    """One recipient of a queued message, its delivery state and the lease of its worker."""

    __tablename__ = "outbound_recipients"
    __table_args__ = (
        CheckConstraint(
            "state IN ('queued', 'deferred', 'held', 'delivered', 'bounced', 'expired')",
            name="state",
        ),
        # The claim query: due rows of the claimable states, oldest due first.
        Index("ix_outbound_recipients_due", "state", "next_attempt_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    message_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("outbound_messages.id", ondelete="CASCADE"), index=True
    )
    address: Mapped[str] = mapped_column(String(320))
    state: Mapped[str] = mapped_column(String(16), default=RCPT_QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(200), default=None)
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    last_reply_code: Mapped[int | None] = mapped_column(Integer, default=None)
    last_reply_text: Mapped[str | None] = mapped_column(Text, default=None)
    last_reply_host: Mapped[str | None] = mapped_column(String(255), default=None)
    # How the last SMTP session was protected ("TLSv1.3 verified", "none: STARTTLS failed ...").
    last_tls: Mapped[str | None] = mapped_column(String(255), default=None)
    delay_warned: Mapped[bool] = mapped_column(Boolean, default=False)

    message: Mapped[OutboundMessage] = relationship(back_populates="recipients")


DKIM_RSA_SHA256 = "rsa-sha256"
DKIM_ED25519_SHA256 = "ed25519-sha256"
DKIM_ALGORITHMS = (DKIM_RSA_SHA256, DKIM_ED25519_SHA256)
DKIM_ACTIVE = "active"  # the domain's signing key (at most one per domain)
DKIM_PUBLISHED = "published"  # rotated out: signs nothing, its record stays until retired
DKIM_RETIRED = "retired"  # record withdrawn, private key destroyed; the row is history
DKIM_STATES = (DKIM_ACTIVE, DKIM_PUBLISHED, DKIM_RETIRED)


class DkimKey(Base):
    """A DKIM signing key (RFC 6376; ed25519 per RFC 8463) of a hosted domain, per selector.

    The private key is stored as PKCS#8 PEM in this table, in clear: every host that signs
    submitted mail reads it from the shared database, and Settings holds no server secret to
    encrypt it with. Whoever can read the database can therefore sign as the domain (as they
    can read every mailbox's mail): protect the database and its backups accordingly. Retiring
    a key erases it (NULL); the row stays so the selector is never reused for another key (a
    resolver may still cache the old record). ``public_key`` is the record's ``p=`` value.
    """

    __tablename__ = "dkim_keys"
    __table_args__ = (
        UniqueConstraint("domain_id", "selector"),
        CheckConstraint("algorithm IN ('rsa-sha256', 'ed25519-sha256')", name="algorithm"),
        CheckConstraint("state IN ('active', 'published', 'retired')", name="state"),
        # One signing key per domain, also under concurrent rotations.
        Index(
            "uq_dkim_keys_one_active",
            "domain_id",
            unique=True,
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    selector: Mapped[str] = mapped_column(String(63))
    algorithm: Mapped[str] = mapped_column(String(16))
    key_bits: Mapped[int] = mapped_column(Integer)
    private_key_pem: Mapped[str | None] = mapped_column(Text, default=None)
    public_key: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=DKIM_ACTIVE)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    retired_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)

    domain: Mapped[Domain] = relationship()


# --- content scanning policy (issue 13; app/services/scan_policy.py) ----------------------------
SCAN_LIST_ALLOW = "allow"
SCAN_LIST_BLOCK = "block"
SCAN_ENTRY_KINDS = ("sender", "domain", "network")


class ScanPolicyOverride(Base):
    """A customer's or a domain's own scanning policy; a NULL field inherits (domain from its
    customer, customer from the platform defaults in Settings)."""

    __tablename__ = "scan_policies"
    __table_args__ = (
        CheckConstraint("(customer_id IS NULL) <> (domain_id IS NULL)", name="one_scope"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int | None] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), unique=True, default=None
    )
    domain_id: Mapped[int | None] = mapped_column(
        ForeignKey("domains.id", ondelete="CASCADE"), unique=True, default=None
    )
    reject_score: Mapped[float | None] = mapped_column(Float, default=None)
    tag_score: Mapped[float | None] = mapped_column(Float, default=None)
    subject_tag: Mapped[str | None] = mapped_column(String(40), default=None)
    greylisting: Mapped[bool | None] = mapped_column(Boolean, default=None)


class ScanListEntry(Base):
    """An allow or block list entry of a domain: a sender address, a sender domain or a client
    network (CIDR), applied before scanning."""

    __tablename__ = "scan_list_entries"
    __table_args__ = (
        UniqueConstraint("domain_id", "list_name", "value"),
        CheckConstraint("list_name IN ('allow', 'block')", name="list_name"),
        CheckConstraint("kind IN ('sender', 'domain', 'network')", name="kind"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"), index=True)
    list_name: Mapped[str] = mapped_column(String(8))
    kind: Mapped[str] = mapped_column(String(8))
    value: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ScanRejection(Base):
    """A message refused by the scan or a block list, kept so support can answer "why was
    this refused?" (the latest ``scan_log.KEEP_PER_DOMAIN`` per domain; older rows pruned)."""

    __tablename__ = "scan_rejections"
    __table_args__ = (
        Index("ix_scan_rejections_domain_time", "domain_id", "occurred_at"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domains.id", ondelete="CASCADE"))
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    queue_id: Mapped[str] = mapped_column(String(32))
    client_ip: Mapped[str] = mapped_column(String(64))
    sender: Mapped[str] = mapped_column(String(320))
    recipient: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float, default=None)
    symbols: Mapped[str] = mapped_column(String(300), default="")
    reason: Mapped[str] = mapped_column(String(200), default="")


# Message tracking (app/tracking.py): what happened to each message, by queue id.
EVENT_KINDS = (
    "received",  # the MX accepted a recipient (RCPT): what it resolved to
    "refused",  # any door refused (reply and stage)
    "stored",  # a copy was stored into a mailbox (message_key: its Maildir unique name)
    "submitted",  # submission accepted the message from an authenticated mailbox
    "queued",  # a recipient was put on the outbound queue
    "attempt",  # one delivery attempt (remote host and its reply)
    "delivered",
    "deferred",
    "bounced",
    "retrieved",  # POP3 RETR
    "deleted",  # POP3 DELE, carried out at QUIT
)
EVENT_SERVICES = ("mx", "submission", "outbound", "pop3")


class MessageEvent(Base):
    """One thing that happened to a message: no bodies, no passwords, addresses lower-cased.

    The indexes serve the searches of the tracking page (address as sender, recipient or
    mailbox; queue id; client address), each with the time so PostgreSQL can read a page in
    time order from the index, and the time alone for time-range searches and pruning.
    """

    __tablename__ = "message_events"
    __table_args__ = (
        Index("ix_message_events_occurred_at", "occurred_at"),
        Index("ix_message_events_queue_id", "queue_id", "occurred_at"),
        Index("ix_message_events_sender", "sender", "occurred_at"),
        Index("ix_message_events_recipient", "recipient", "occurred_at"),
        Index("ix_message_events_mailbox", "mailbox", "occurred_at"),
        Index("ix_message_events_client_ip", "client_ip", "occurred_at"),
        Index("ix_message_events_message_key", "message_key"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(String(16))
    service: Mapped[str] = mapped_column(String(16))
    queue_id: Mapped[str | None] = mapped_column(String(32), default=None)
    client_ip: Mapped[str | None] = mapped_column(String(45), default=None)
    helo: Mapped[str | None] = mapped_column(String(255), default=None)
    sender: Mapped[str | None] = mapped_column(String(320), default=None)
    recipient: Mapped[str | None] = mapped_column(String(320), default=None)
    mailbox: Mapped[str | None] = mapped_column(String(320), default=None)
    remote_host: Mapped[str | None] = mapped_column(String(255), default=None)
    stage: Mapped[str | None] = mapped_column(String(16), default=None)
    reply: Mapped[str | None] = mapped_column(String(512), default=None)
    detail: Mapped[str | None] = mapped_column(String(512), default=None)
    message_key: Mapped[str | None] = mapped_column(String(128), default=None)


# ------------------------------------------------------------------------------ issue 15
class CustomerAdmin(Base):
    """A customer's own administrator: logs in to the portal and sees only that customer.

    ``username`` shares one namespace with operators (the same /login form serves both; see
    app/services/customer_admins.py)."""

    __tablename__ = "customer_admins"
    __table_args__ = ({"sqlite_autoincrement": True},)

    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(
        ForeignKey("customers.id", ondelete="CASCADE"), index=True
    )
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)

    customer: Mapped[Customer] = relationship()


class TenantSession(Base):
    """A customer administrator's portal login session (hash of the cookie, as WebSession)."""

    __tablename__ = "tenant_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_admin_id: Mapped[int] = mapped_column(
        ForeignKey("customer_admins.id", ondelete="CASCADE"), index=True
    )
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    remote_addr: Mapped[str | None] = mapped_column(String(64), default=None)


# --- mailbox self-service: forwarding, auto-reply, user sessions (issue 15) ------------------
class MailboxForward(Base):
    """Where a mailbox's mail is forwarded (at most one address), and whether a copy stays."""

    __tablename__ = "mailbox_forwards"

    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
    )
    address: Mapped[str] = mapped_column(String(320))
    keep_copy: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class AutoReply(Base):
    """A mailbox's vacation reply (RFC 3834), active from ``starts_on`` to ``ends_on`` (UTC
    dates, both included; None = open-ended) while ``enabled``."""

    __tablename__ = "auto_replies"

    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
    )
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    starts_on: Mapped[dt.date | None] = mapped_column(Date, default=None)
    ends_on: Mapped[dt.date | None] = mapped_column(Date, default=None)
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class AutoReplySent(Base):
    """Who a mailbox's auto-reply answered last, and when (at most once per sender per N
    days, RFC 3834 section 2)."""

    __tablename__ = "auto_reply_sent"

    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), primary_key=True
    )
    sender: Mapped[str] = mapped_column(String(320), primary_key=True)
    sent_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class MailboxSession(Base):
    """A mailbox user's self-service login (/me); never grants the operator portal."""

    __tablename__ = "mailbox_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    mailbox_id: Mapped[int] = mapped_column(
        ForeignKey("mailboxes.id", ondelete="CASCADE"), index=True
    )
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


_ONE_OWNER = "(operator_id IS NULL) <> (customer_admin_id IS NULL)"


class TotpCredential(Base):
    """An RFC 6238 secret of an operator or a customer administrator (exactly one of them).

    ``confirmed_at`` is None until the first code was entered (enrolment); ``last_step`` is
    the time step of the last accepted code, so a code cannot be replayed (RFC 6238 5.2)."""

    __tablename__ = "totp_credentials"
    __table_args__ = (CheckConstraint(_ONE_OWNER, name="one_owner"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    operator_id: Mapped[int | None] = mapped_column(
        ForeignKey("operators.id", ondelete="CASCADE"), unique=True, default=None
    )
    customer_admin_id: Mapped[int | None] = mapped_column(
        ForeignKey("customer_admins.id", ondelete="CASCADE"), unique=True, default=None
    )
    secret: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    last_step: Mapped[int | None] = mapped_column(BigInteger, default=None)


class RecoveryCode(Base):
    """A one-time recovery code of a TOTP credential; only its SHA-256 is stored."""

    __tablename__ = "totp_recovery_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    credential_id: Mapped[int] = mapped_column(
        ForeignKey("totp_credentials.id", ondelete="CASCADE"), index=True
    )
    code_hash: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)


class LoginChallenge(Base):
    """A password that verified, waiting for its second factor (hash of a short-lived cookie)."""

    __tablename__ = "login_challenges"
    __table_args__ = (CheckConstraint(_ONE_OWNER, name="one_owner"),)

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    operator_id: Mapped[int | None] = mapped_column(
        ForeignKey("operators.id", ondelete="CASCADE"), default=None
    )
    customer_admin_id: Mapped[int | None] = mapped_column(
        ForeignKey("customer_admins.id", ondelete="CASCADE"), default=None
    )
    next_url: Mapped[str] = mapped_column(String(2000), default="/")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
