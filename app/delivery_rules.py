"""Forwarding and auto-replies at delivery, for the MX and submission alike (one place).

Theory of operation: after the copies of a message are planned and before they are stored,
``DeliveryRules.prepare`` loads the rules of the target mailboxes in one query (no rules: an
empty plan, nothing else happens). For each mailbox with a forward it writes one spool file
(its ``Delivered-To`` and trace header, then the message, CRLF line endings) and notes whether
the mailbox keeps its own copy. The edge stores the copies it still has to, then calls
``Plan.enqueue`` inside the transaction that decides its 250: the forwards become queue rows
(origin ``forward``) for the delivery agent, which sends remote ones by SMTP and delivers
hosted ones into their Maildir. A forward is therefore as durable as a local copy: if the
enqueue fails, the edge takes its copies back and answers 4xx, and ``Plan.discard`` removes
the spool files. Only after that commit, ``Plan.send_auto_replies`` answers (RFC 3834,
``app.services.autoreply``) in a transaction of its own; a failure there is logged, never
turned into a 4xx (the message itself is delivered, and a retry would duplicate it).

Decisions: a remote forward's envelope sender is rewritten with SRS (``app.srs``) at the
forwarding mailbox's domain; a hosted forward keeps the original sender. A message that
already carries ``Delivered-To:`` with the forwarding mailbox's address has looped through us:
it is kept in that mailbox (whatever ``keep_copy`` says, so nothing is lost) and not
forwarded again (Postfix's local(8) does the same check). Mail forwarded to a hosted mailbox
is delivered there by the agent without that mailbox's own forward or auto-reply (no chains,
no loops between two mailboxes).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, Dialect, Engine, bindparam, or_, select, union
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import DriverSql, compile_for_driver, driver_ids, transaction
from app.models import (
    ORIGIN_AUTOREPLY,
    ORIGIN_FORWARD,
    AutoReply,
    Domain,
    Mailbox,
    MailboxForward,
    utcnow,
)
from app.services import autoreply, selfservice
from app.services import queue as queue_service
from app.spool import SpoolStore
from app.srs import SrsRewriter

log = logging.getLogger(__name__)

# The header section read to decide on loops and auto-replies.
HEAD_LIMIT = 64 * 1024

_RULES = (
    select(
        Mailbox.id,
        Mailbox.local_part,
        Domain.name,
        MailboxForward.address,
        MailboxForward.keep_copy,
        AutoReply.enabled,
        AutoReply.subject,
        AutoReply.body,
        AutoReply.starts_on,
        AutoReply.ends_on,
    )
    .join(Domain, Mailbox.domain_id == Domain.id)
    .outerjoin(MailboxForward, MailboxForward.mailbox_id == Mailbox.id)
    .outerjoin(AutoReply, AutoReply.mailbox_id == Mailbox.id)
    # Built once, not per message (building a select costs more than running it).
    .where(
        Mailbox.id.in_(bindparam("ids", expanding=True)),
        or_(MailboxForward.mailbox_id.is_not(None), AutoReply.mailbox_id.is_not(None)),
    )
)


def mailboxes_with_rules(connection: Connection, *, ids: Sequence[int]) -> set[int]:
    """Which of ``ids`` have a forward or an auto-reply (enabled or not).

    This runs once per delivered message, from a thread pool; through SQLAlchemy's execution
    layer it took a tenth of the ingress's Python time at 4 KiB (bench/profile_ingress.py
    --gil), so, as ``existing_mailbox_ids``, the statement is compiled once per dialect and
    number of ids and run on the driver's cursor."""
    if not ids:
        return set()
    named = {f"{side}{n}": mailbox_id for n, mailbox_id in enumerate(ids) for side in "ab"}
    return driver_ids(connection, _with_rules_sql(connection.dialect, len(ids)), named)


@functools.lru_cache(maxsize=64)
def _with_rules_sql(dialect: Dialect, count: int) -> DriverSql:
    forwards = select(MailboxForward.mailbox_id).where(
        MailboxForward.mailbox_id.in_([bindparam(f"a{n}") for n in range(count)])
    )
    replies = select(AutoReply.mailbox_id).where(
        AutoReply.mailbox_id.in_([bindparam(f"b{n}") for n in range(count)])
    )
    return compile_for_driver(union(forwards, replies), dialect)


@dataclass(frozen=True, slots=True)
class Recipient:
    """One target mailbox of a delivery: its id, its address, the RCPT address that led to it."""

    mailbox_id: int
    address: str
    rcpt: str


@dataclass(frozen=True, slots=True)
class MailboxRules:
    mailbox_id: int
    address: str
    forward_to: str | None
    keep_copy: bool
    forward_hosted: bool
    reply: autoreply.ReplyRule | None


@dataclass(frozen=True, slots=True)
class PendingForward:
    mailbox_id: int
    spool_id: str
    size: int
    sender: str
    recipient: str


def _read_connection(
    factory: sessionmaker[Session],
) -> contextlib.AbstractContextManager[Session | Connection]:
    """A Core connection of the factory's engine (no ORM session per message), or a session
    when the factory is not bound to an engine; neither commits."""
    bind = getattr(factory, "kw", {}).get("bind")
    if isinstance(bind, Engine):
        return bind.connect()
    return factory()


def head_of(chunks: Iterable[bytes], limit: int = HEAD_LIMIT) -> bytes:
    """The header section of a message given in pieces (at most ``limit`` octets)."""
    head = b""
    for chunk in chunks:
        head += chunk
        for sep in (b"\n\n", b"\r\n\r\n"):
            at = head.find(sep)
            if at >= 0:
                return head[: at + len(sep)]
        if len(head) >= limit:
            break
    return head[:limit]


def _crlf(chunks: Iterable[bytes]) -> Iterator[bytes]:
    for chunk in chunks:
        yield chunk.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _delivered_to(head: bytes) -> set[str]:
    headers = autoreply.parse_headers(head)
    return {str(v).strip().lower() for v in headers.get_all("Delivered-To", [])}


@dataclass
class Plan:
    """What the rules ask of one delivery (see the module docstring)."""

    owner: DeliveryRules
    sender: str
    recipients: list[Recipient] = field(default_factory=list)
    rules: dict[int, MailboxRules] = field(default_factory=dict)
    forwards: list[PendingForward] = field(default_factory=list)
    head: bytes = b""
    _no_copy: set[int] = field(default_factory=set)

    def keeps_copy(self, mailbox_id: int) -> bool:
        return mailbox_id not in self._no_copy

    @property
    def forwarded_only(self) -> int:
        """Mailboxes whose mail is forwarded without a copy kept (they count as delivered)."""
        return len(self._no_copy)

    def enqueue(self, session: Session, *, alive: set[int] | None = None) -> None:
        """Queue the forwards (of the mailboxes in ``alive`` only, when given); the caller's
        transaction commits them before its 250."""
        now = self.owner.clock()
        for item in self.forwards:
            if alive is not None and item.mailbox_id not in alive:
                self.owner.spool.remove(item.spool_id)
                continue
            queue_service.enqueue(
                session,
                spool_id=item.spool_id,
                size=item.size,
                sender=item.sender,
                recipients=[item.recipient],
                origin=ORIGIN_FORWARD,
                now=now,
            )

    def discard(self) -> None:
        """No 250: the forwards' spool files go (best effort; the orphan cleaner is the net)."""
        for item in self.forwards:
            try:
                self.owner.spool.remove(item.spool_id)
            except OSError:
                log.warning("could not remove spool file %s", item.spool_id)

    def send_auto_replies(self, factory: sessionmaker[Session]) -> int:
        """After the delivery's commit: the auto-replies due (RFC 3834); returns how many
        were queued. Never raises (logged instead)."""
        due = [(r, self.rules[r.mailbox_id]) for r in self.recipients if r.mailbox_id in self.rules]
        due = [(r, rules) for r, rules in due if rules.reply is not None]
        if not due:
            return 0
        try:
            return self.owner.auto_replies(factory, self, due)
        except Exception:
            log.exception("auto-reply failed for a message from <%s>", self.sender)
            return 0


class DeliveryRules:
    """Built once per edge from the settings; ``prepare`` per delivery."""

    def __init__(
        self,
        settings: Settings,
        *,
        spool: SpoolStore,
        srs: SrsRewriter | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self._srs = srs
        self.clock = clock
        self.interval = dt.timedelta(days=settings.autoreply_interval_days)

    @property
    def srs(self) -> SrsRewriter:
        if self._srs is None:
            self._srs = SrsRewriter.from_settings(self.settings)
        return self._srs

    def load(
        self, session: Session | Connection, *, mailbox_ids: Sequence[int]
    ) -> dict[int, MailboxRules]:
        """The rules of these mailboxes, in one query; only mailboxes that have any. A Core
        connection is cheaper (this runs once per delivered message)."""
        if not mailbox_ids:
            return {}
        wanted = sorted(set(mailbox_ids))
        if isinstance(session, Connection):
            # Most mailboxes have no rule: ask which have any on the driver's cursor first
            # (a few microseconds), and run the full query only for those.
            wanted = sorted(mailboxes_with_rules(session, ids=wanted))
            if not wanted:
                return {}
        rows = session.execute(_RULES, {"ids": wanted}).all()
        forward_domains = {row[3].rpartition("@")[2] for row in rows if row[3]}
        hosted: set[str] = set()
        if forward_domains:
            hosted = set(
                session.scalars(select(Domain.name).where(Domain.name.in_(sorted(forward_domains))))
            )
        found: dict[int, MailboxRules] = {}
        for mid, local, domain, fwd, keep, enabled, subject, body, starts, ends in rows:
            address = f"{local}@{domain}"
            reply = None
            if enabled:
                reply = autoreply.ReplyRule(mid, address, subject, body, starts, ends)
            on_host = bool(fwd) and fwd.rpartition("@")[2] in hosted
            found[mid] = MailboxRules(
                mid, address, fwd, bool(keep) if fwd else True, on_host, reply
            )
        return found

    def prepare(
        self,
        factory: sessionmaker[Session],
        *,
        sender: str,
        recipients: Sequence[Recipient],
        traces: Sequence[bytes],
        body: Callable[[], Iterable[bytes]],
        head: bytes | None = None,
    ) -> Plan:
        """Load the rules and write the forwards' spool files (blocking: a worker thread).

        ``traces[i]`` is the header the edge puts before recipient ``i``'s copy; its
        ``Return-Path:`` line (a final delivery's field, RFC 5321 section 4.4) is dropped for
        a forward. ``body`` yields the message (may be called more than once). ``head`` is
        the message's header section as it arrived when ``body`` no longer starts with it (a
        scan rewrote it into each copy's trace): loop checks and auto-replies read it."""
        plan = Plan(self, sender, list(recipients))
        with _read_connection(factory) as connection:
            plan.rules = self.load(connection, mailbox_ids=[r.mailbox_id for r in recipients])
        if not plan.rules:
            return plan
        plan.head = head_of([head]) if head else head_of(body())
        if not any(rules.forward_to for rules in plan.rules.values()):
            return plan
        seen = _delivered_to(plan.head)
        try:
            for recipient, trace in zip(recipients, traces, strict=True):
                rules = plan.rules.get(recipient.mailbox_id)
                if rules is None or not rules.forward_to:
                    continue
                if rules.address.lower() in seen:
                    log.warning("forwarding loop for %s: kept, not forwarded", rules.address)
                    continue
                self._spool_forward(plan, recipient, rules, trace, body)
        except BaseException:
            plan.discard()
            raise
        return plan

    def _spool_forward(
        self,
        plan: Plan,
        recipient: Recipient,
        rules: MailboxRules,
        trace: bytes,
        body: Callable[[], Iterable[bytes]],
    ) -> None:
        assert rules.forward_to is not None
        lines = [ln for ln in trace.splitlines(keepends=True) if not ln.startswith(b"Return-Path:")]
        header = b"".join(lines)
        if not header.lower().startswith(b"delivered-to:"):
            header = f"Delivered-To: {rules.address}\n".encode() + header
        written = self.spool.write(_crlf([header, *body()]))
        sender = plan.sender
        if sender and not rules.forward_hosted:
            domain = rules.address.rpartition("@")[2]
            sender = self.srs.forward(sender, domain=domain) or rules.address
        plan.forwards.append(
            PendingForward(
                recipient.mailbox_id, written.spool_id, written.size, sender, rules.forward_to
            )
        )
        if not rules.keep_copy:
            plan._no_copy.add(recipient.mailbox_id)

    def auto_replies(
        self,
        factory: sessionmaker[Session],
        plan: Plan,
        due: list[tuple[Recipient, MailboxRules]],
    ) -> int:
        now = self.clock()
        headers = autoreply.parse_headers(plan.head)
        sent = 0
        for recipient, rules in due:
            rule = rules.reply
            assert rule is not None
            if not rule.active_on(now.date()):
                continue
            with transaction(factory) as session:
                addresses = {rules.address, recipient.rcpt.lower(), recipient.address}
                addresses.update(selfservice.aliases_of(session, address=rules.address))
                why = autoreply.refusal(
                    sender=plan.sender,
                    headers=headers,
                    addresses=addresses,
                    own_address=rules.address,
                )
                who = (rules.address, plan.sender)
                if why is not None:
                    log.info("no auto-reply from %s to <%s>: %s", *who, why)
                    continue
                if not autoreply.claim_reply(
                    session,
                    mailbox_id=rule.mailbox_id,
                    sender=plan.sender,
                    now=now,
                    interval=self.interval,
                ):
                    log.info(
                        "no auto-reply from %s to <%s>: answered lately", rules.address, plan.sender
                    )
                    continue
                data = autoreply.build_reply(
                    rule, to=plan.sender, headers=headers, now=now, hostname=self.settings.hostname
                )
                written = self.spool.write([data])
                try:
                    queue_service.enqueue(
                        session,
                        spool_id=written.spool_id,
                        size=written.size,
                        sender="",
                        recipients=[plan.sender],
                        origin=ORIGIN_AUTOREPLY,
                        now=now,
                    )
                    session.flush()
                except BaseException:
                    self.spool.remove(written.spool_id)
                    raise
            sent += 1
        return sent
