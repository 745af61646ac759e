"""The MX side of relay domains: recipient checks per mode (list / verify callout / any), ETRN
(RFC 1985), the Received-count loop check, and storing relay mail in the outbound queue.

Policy decisions (the issue is silent on these; README "Relay domains" repeats them):

* A callout is ``MAIL FROM:<>`` + ``RCPT TO:<address>`` to the next hop (its first host that
  answers), then ``QUIT``; STARTTLS when offered (certificate not checked: the probe carries
  one address), and required when the domain's TLS policy is ``required``. 2xx accepts, 5xx is
  ``550 5.1.1`` with our own text (the remote text names the customer's internal hosts and is
  never echoed), anything else (4xx, no answer, no address, timeout, a next hop greeting with
  our own name) is ``451 4.4.x``: never a 5xx, so a backup-MX role keeps working. Accepting and
  refusing answers are cached per process for the domain's ``callout_cache_seconds``;
  temporary failures are not cached.
* ETRN: only from ``flush_networks``; anything else (another address, a domain that is no
  relay domain, a hosted domain) is the same ``459`` without detail, so nothing is learnt about
  queue contents. ``250`` = delivery of waiting mail started, ``251`` = no mail waiting, ``252``
  = mail is waiting but already due or being delivered, ``458`` = held by the operator (or the
  queue cannot be reached). ``@domain`` (subdomains) and ``#queue`` forms are answered ``458``.
* Every message whose header section has more than 30 ``Received:`` fields is refused
  ``554 5.4.6`` (RFC 5321 section 6.3), hosted or relay.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import aiosmtplib
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.errors import ValidationError
from app.maildir_stream import SpooledBody
from app.models import (
    ORIGIN_RELAY,
    RCPT_HELD,
    RELAY_MODE_ANY,
    RELAY_MODE_LIST,
    OutboundMessage,
    utcnow,
)
from app.services import queue, relay, relay_recipients
from app.services.audit import Actor
from app.services.relay import RelayInfo
from app.services.relay_hop import HopUnresolved, async_resolver, hop_hosts, parse_next_hop
from app.spool import SpoolStore

log = logging.getLogger("smtp_ingress")
T = TypeVar("T")

# RFC 5321 section 6.3: a message with "too many" Received fields is looping; the issue fixes
# the limit at 30 (Postfix's hopcount_limit is 50).
MAX_RECEIVED = 30
# The header section is searched in this many octets at most (a real header is far smaller).
_HEAD_LIMIT = 256 * 1024
_RECEIVED = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)
_INFO_CACHE_MAX = 10_000
_CALLOUT_CACHE_MAX = 50_000

LOOP_REFUSED = "554 5.4.6 Too many Received headers: mail loop detected (RFC 5321 section 6.3)"
RELAY_RCPT_OK = "250 2.1.5 Recipient ok"
RELAY_UNKNOWN_USER = "550 5.1.1 Recipient address rejected: User unknown"
RELAY_SUSPENDED = "550 5.2.1 Recipient address rejected: domain disabled"
CALLOUT_UNKNOWN = "550 5.1.1 Recipient address rejected: User unknown in the destination"
CALLOUT_UNREACHABLE = (
    "451 4.4.1 Recipient address cannot be verified now: destination not reachable, try again later"
)
CALLOUT_TEMPORARY = (
    "451 4.4.3 Recipient address cannot be verified now: destination answered with a "
    "temporary failure, try again later"
)
BAD_SENDER_FOR_RELAY = "553 5.1.7 Sender address cannot be relayed"

ETRN_SYNTAX = "501 5.5.4 Syntax: ETRN domain"
ETRN_IN_TRANSACTION = "503 5.5.1 Error: MAIL transaction in progress"


def etrn_started(domain: str) -> str:
    return f"250 2.0.0 Queuing for node {domain} started"


def etrn_none(domain: str) -> str:
    return f"251 2.0.0 OK, no messages waiting for node {domain}"


def etrn_pending(domain: str) -> str:
    return f"252 2.0.0 OK, pending messages for node {domain} started"


def etrn_unable(domain: str) -> str:
    return f"458 4.7.0 Unable to queue messages for node {domain}"


def etrn_refused(domain: str) -> str:
    return f"459 5.7.1 Node {domain} not allowed: not authorised"


def too_many_received(head: bytes) -> bool:
    """Does the header section of ``head`` (LF line endings) hold over MAX_RECEIVED fields?"""
    end = head.find(b"\n\n")
    section = head if end < 0 else head[: end + 1]
    if not section.startswith(b"\n"):
        section = b"\n" + section
    return len(_RECEIVED.findall(section)) > MAX_RECEIVED


@dataclass(frozen=True, slots=True)
class RelayCopy:
    """What the delivery job needs for a transaction's relay recipients."""

    queue_id: str
    sender: str
    recipients: tuple[tuple[str, RelayInfo], ...]
    trace_header: bytes  # LF line endings, as the body


class _TTLCache:
    def __init__(self, limit: int) -> None:
        self._entries: dict[Any, tuple[float, Any]] = {}
        self._limit = limit

    def get(self, key: Any) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: Any, value: Any, ttl: float) -> None:
        if ttl <= 0:
            return
        if len(self._entries) >= self._limit:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + ttl, value)


def _unverified() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class RelayDesk:
    """Relay policy and storage for one ingress handler (its caches are per process)."""

    def __init__(
        self,
        settings: Settings,
        *,
        session_factory: sessionmaker[Session],
        spool: SpoolStore,
        blocking: Callable[..., Awaitable[Any]],
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.spool = spool
        self._blocking = blocking
        self._infos = _TTLCache(_INFO_CACHE_MAX)
        self.callouts = _TTLCache(_CALLOUT_CACHE_MAX)
        # Listed or not, per (domain id, local part), for smtp_resolution_cache_seconds (as
        # the hosted resolutions are).
        self._listed_cache = _TTLCache(_CALLOUT_CACHE_MAX)
        self._resolver = async_resolver(settings)

    # ------------------------------------------------------------------ RCPT
    async def info(self, domain: str) -> RelayInfo | None:
        key = domain.lower()
        cached = self._infos.get(key)
        if cached is not None:
            return None if cached is False else cached
        found = await self._blocking(self._load_info, key)
        self._infos.put(key, found if found is not None else False, self._info_ttl)
        return found  # type: ignore[no-any-return]

    @property
    def _info_ttl(self) -> float:
        return self.settings.smtp_resolution_cache_seconds

    def _load_info(self, domain: str) -> RelayInfo | None:
        with transaction(self.session_factory) as session:
            return relay.relay_info(session, domain_name=domain)

    def _listed(self, domain_id: int, local: str) -> bool:
        with transaction(self.session_factory) as session:
            return relay_recipients.is_listed(session, domain_id=domain_id, local_part=local)

    async def rcpt(self, info: RelayInfo, address: str) -> str:
        """The reply to ``RCPT TO:<address>`` for a relay domain."""
        if not info.active:
            return RELAY_SUSPENDED
        local = address.rpartition("@")[0]
        if info.recipient_mode == RELAY_MODE_ANY:
            return RELAY_RCPT_OK
        if info.recipient_mode == RELAY_MODE_LIST:
            key = (info.domain_id, local.lower())
            listed = self._listed_cache.get(key)
            if listed is None:
                listed = await self._blocking(self._listed, info.domain_id, local)
                self._listed_cache.put(key, listed, self._info_ttl)
            return RELAY_RCPT_OK if listed else RELAY_UNKNOWN_USER
        return await self.callout(info, address)

    async def callout(self, info: RelayInfo, address: str) -> str:
        key = (info.domain_id, info.next_hop, address.lower())
        cached = self.callouts.get(key)
        if cached is not None:
            return str(cached)
        reply, cacheable = await self._probe(info, address)
        if cacheable:
            self.callouts.put(key, reply, info.callout_cache_seconds)
        return reply

    async def _probe(self, info: RelayInfo, address: str) -> tuple[str, bool]:
        s = self.settings
        try:
            hosts = await hop_hosts(
                parse_next_hop(info.next_hop), resolver=self._resolver, default_port=s.delivery_port
            )
        except (HopUnresolved, ValidationError) as exc:
            log.info("callout %s: %s", info.name, exc)
            return CALLOUT_UNREACHABLE, False
        for host in hosts:
            smtp = aiosmtplib.SMTP(
                hostname=host.address,
                port=host.port,
                local_hostname=s.hostname,
                timeout=s.relay_callout_timeout,
                start_tls=False,
                use_tls=False,
            )
            where = f"{host.name}[{host.address}]:{host.port}"
            try:
                greeting = await smtp.connect()
                if _greets_as(greeting.message, s.hostname):
                    log.warning(
                        "callout %s: %s greets as %s: mail loop", info.name, where, s.hostname
                    )
                    smtp.close()
                    continue
                await smtp.ehlo()
                if smtp.supports_extension("starttls"):
                    await smtp.starttls(tls_context=_unverified(), server_hostname=host.name)
                    await smtp.ehlo()
                elif info.tls_policy == "required":
                    log.info("callout %s: %s offers no STARTTLS (TLS required)", info.name, where)
                    smtp.close()
                    continue
                await smtp.mail("")
                response = await smtp.rcpt(address)
                code = response.code
            except aiosmtplib.SMTPResponseException as exc:
                code = exc.code
                log.info("callout %s <%s>: %s %s", where, address, exc.code, exc.message)
            except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
                log.info("callout %s <%s> failed: %s", where, address, exc)
                smtp.close()
                continue
            try:
                await smtp.quit()
            except (aiosmtplib.SMTPException, OSError):
                smtp.close()
            if 200 <= code < 300:
                return RELAY_RCPT_OK, True
            if 500 <= code < 600:
                return CALLOUT_UNKNOWN, True
            if code in (421,):  # the host is going away: try the next one
                continue
            return CALLOUT_TEMPORARY, False
        return CALLOUT_UNREACHABLE, False

    # ------------------------------------------------------------------ ETRN
    async def etrn(self, client_ip: str, arg: str | None) -> str:
        name = (arg or "").strip()
        if not name or " " in name:
            return ETRN_SYNTAX
        if name[0] in "@#":
            return etrn_unable(name)
        shown = name.lower()
        if any(ord(c) < 0x21 or ord(c) > 0x7E for c in shown):
            return ETRN_SYNTAX
        try:
            return str(await self._blocking(self._etrn, client_ip, shown))
        except Exception:
            log.warning("ETRN %s from %s failed", shown, client_ip, exc_info=True)
            return etrn_unable(shown)

    def _etrn(self, client_ip: str, domain: str) -> str:
        with transaction(self.session_factory) as session:
            info = relay.relay_info(session, domain_name=domain)
            if info is None or not info.may_flush(client_ip):
                log.info("ETRN %s refused client=%s", domain, client_ip)
                return etrn_refused(domain)
            if info.held:
                return etrn_unable(domain)
            summary = relay.queue_summary(session, domain_id=info.domain_id)
            if summary.count == 0:
                return etrn_none(domain)
            actor = Actor("system", "etrn", client_ip)
            flushed = relay.flush(session, actor=actor, domain_id=info.domain_id, now=utcnow())
            log.info("ETRN %s client=%s: %d recipient(s) made due", domain, client_ip, flushed)
            return etrn_started(domain) if flushed else etrn_pending(domain)

    # ------------------------------------------------------------------ DATA
    def trace_header(
        self, *, helo: str, client_ip: str, protocol: str, queue_id: str, rcpts: list[str]
    ) -> bytes:
        """The Received field of relayed mail (RFC 5321 section 4.4): no Return-Path or
        Delivered-To, those belong to the final delivery; "for" only with one recipient."""
        date = email.utils.format_datetime(dt.datetime.now(dt.UTC))
        for_clause = f"\n\tfor <{rcpts[0]}>" if len(rcpts) == 1 else ""
        return (
            f"Received: from {helo} ([{client_ip}])\n"
            f"\tby {self.settings.hostname} (Mailhost) with {protocol} id {queue_id}"
            f"{for_clause}; {date}\n"
        ).encode("utf-8", "surrogateescape")

    def store(self, copy: RelayCopy, body: SpooledBody) -> tuple[str, int]:
        """Spool ``trace header + body`` (CRLF, fsync'd) and commit one queue message for the
        relay recipients (held ones 'held'). Blocking: runs in the delivery job. Returns the
        (spool id, outbound message id) so a later failure can take it back (``unstore``)."""
        with self.spool.writer() as writer:
            writer.write(copy.trace_header.replace(b"\n", b"\r\n"))
            body.write_to(lambda piece: writer.write(piece.replace(b"\n", b"\r\n")))
            spooled = writer.commit()
        try:
            with transaction(self.session_factory) as session:
                customers = {info.customer_id for _, info in copy.recipients}
                message = queue.enqueue(
                    session,
                    spool_id=spooled.spool_id,
                    size=spooled.size,
                    sender=copy.sender,
                    recipients=[address for address, _ in copy.recipients],
                    origin=ORIGIN_RELAY,
                    now=utcnow(),
                    customer_id=customers.pop() if len(customers) == 1 else None,
                )
                # A domain held after RCPT (the info is cached briefly) is caught by the
                # delivery agent, which holds rows it claims for a held domain.
                held = {address.lower() for address, info in copy.recipients if info.held}
                for row in message.recipients:
                    if row.address.lower() in held:
                        row.state = RCPT_HELD
                message_id = message.id
        except BaseException:
            self.spool.remove(spooled.spool_id)
            raise
        return spooled.spool_id, message_id

    def unstore(self, spool_id: str, message_id: int) -> None:
        """Take a stored relay copy back (the hosted copies of the same transaction failed,
        and the client will retry the whole message)."""
        with transaction(self.session_factory) as session:
            message = session.get(OutboundMessage, message_id)
            if message is not None:
                session.delete(message)
        self.spool.remove(spool_id)


def _greets_as(greeting: str, hostname: str) -> bool:
    first = greeting.split(None, 1)[0] if greeting.split() else ""
    return first.lower().rstrip(".") == hostname.lower().rstrip(".")
