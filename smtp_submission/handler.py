"""Submission policy and delivery: the aiosmtpd hooks that decide replies; blocking work (password
hashing, database, fsync) runs in the executor, never on the event loop.

Decisions written down (README "Submission"):

* Null sender ``MAIL FROM:<>`` from a user: refused (``553 5.7.1``); only the platform sends
  bounces.
* Envelope sender not delivering to the authenticated mailbox: ``553 5.7.1`` at MAIL. Every
  address of the header ``From:`` is checked the same way at the end of DATA: ``550 5.7.1``;
  a message without ``From:`` is ``550 5.6.0``.
* Recipients with ``%``, ``!``, quotes, source routes or address literals: ``553 5.7.1``.
* Hosted recipients are resolved as the MX resolves them (unknown ``550 5.1.1``, full
  ``452 4.2.2``) and stored straight into their Maildirs; others go to the outbound queue.
  250 comes after the Maildir copies are fsync'd AND the spool file is fsync'd and the queue
  rows committed; if the queue step fails, the local copies are removed again (451).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import logging
import secrets
import time
from concurrent.futures import Executor
from typing import Any, TypeVar

from aiosmtpd.smtp import Session as SmtpSession
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app import metrics
from app.config import Settings
from app.db import transaction
from app.delivery_rules import DeliveryRules
from app.errors import (
    MailhostError,
    SendingDisabled,
    SendLimitExceeded,
    TemporaryError,
    ValidationError,
)
from app.maildir import MaildirStore
from app.models import utcnow
from app.scanning.scanner import Scanner
from app.services import accounts, scan_log, sending, throttle
from app.services import queue as queue_service
from app.services.resolution import POSTMASTER, Verdict, resolve_recipient
from app.services.scan_policy import defaults_from
from app.services.sending import may_send_as
from app.spool import SpoolStore
from app.tracking import EventWriter
from smtp_submission import message as msg
from smtp_submission import replies
from smtp_submission import tracking as tracked
from smtp_submission.delivery import SubmissionDelivery
from smtp_submission.envelope import Identity, SubmissionEnvelope
from smtp_submission.scanning import outbound_scan
from smtp_submission.sender_policy import routing_trick

log = logging.getLogger("smtp_submission")
T = TypeVar("T")

# RFC 4954 section 4: the decoded credentials are bounded by the 12288-octet AUTH line.
MAX_CREDENTIAL = 1024


class AuthFailed(Exception):
    """Raised by ``authenticate`` with the reply to send."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def _peer_ip(session: SmtpSession) -> str:
    peer = getattr(session, "peer", None)
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


def identity_of(session: SmtpSession) -> Identity | None:
    data = getattr(session, "auth_data", None)
    return data if isinstance(data, Identity) and session.authenticated else None


class SubmissionHandler(SubmissionDelivery):
    """aiosmtpd handler for authenticated users: AUTH check, MAIL / RCPT policy, DATA."""

    def __init__(
        self,
        settings: Settings,
        *,
        session_factory: sessionmaker[Session],
        store: MaildirStore,
        spool: SpoolStore,
        executor: Executor,
        tracking: EventWriter | None = None,
    ) -> None:
        self.settings = settings
        self.tracking = tracking or EventWriter.disabled()
        self.factory = session_factory
        self.store = store
        self.spool = spool
        self.executor = executor
        self.throttle_policy = throttle.ThrottlePolicy.from_settings(settings)
        self.limits = sending.SendingLimits.from_settings(settings)
        # Outbound scanning (issue 13): the same scanners and platform thresholds as inbound.
        self.scanner = Scanner.from_settings(settings)
        self.scan_policy = defaults_from(settings)
        # Forwarding and auto-replies of hosted recipients (app/delivery_rules.py).
        self.rules = DeliveryRules(settings, spool=spool)

    def _flag(self, mailbox_id: int, reason: str) -> None:
        with transaction(self.factory) as s:
            scan_log.flag_outbound_spam(s, mailbox_id=mailbox_id, reason=reason, now=utcnow())

    async def _blocking(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    # ------------------------------------------------------------------ AUTH
    async def authenticate(self, *, login: bytes, password: bytes, peer_ip: str) -> Identity:
        """The identity for these credentials, or ``AuthFailed`` with 535 / 454."""
        try:
            user = login.decode("utf-8")
            secret = password.decode("utf-8")
        except UnicodeDecodeError:
            user, secret = login.decode("latin-1"), ""
        result: Identity | str = await self._blocking(self._authenticate, user, secret, peer_ip)
        if isinstance(result, str):
            raise AuthFailed(result)
        return result

    def _authenticate(self, user: str, secret: str, peer_ip: str) -> Identity | str:
        policy = self.throttle_policy
        try:
            with transaction(self.factory) as db:
                ticket = throttle.reserve(
                    db, door="smtp", address=peer_ip, account=user, policy=policy
                )
        except (TemporaryError, SQLAlchemyError):
            log.exception("login throttle unavailable")
            return replies.AUTH_TEMPFAIL
        if isinstance(ticket, throttle.Refused):
            log.info("auth throttled client=%s reason=%s", peer_ip, ticket.reason)
            return replies.AUTH_THROTTLED
        if not user or not secret or len(user) > 320 or len(secret) > MAX_CREDENTIAL:
            return replies.AUTH_INVALID  # the charge stays: a failed attempt
        try:
            with transaction(self.factory) as db:
                mailbox = accounts.authenticate_mailbox(
                    db, address=user.strip(), password=secret, door=accounts.DOOR_SUBMISSION
                )
                if mailbox is None:
                    log.info("auth failed client=%s", peer_ip)
                    return replies.AUTH_INVALID
                identity = Identity(
                    mailbox_id=mailbox.id,
                    address=f"{mailbox.local_part}@{mailbox.domain.name}",
                    customer_id=mailbox.domain.customer_id,
                )
                throttle.settle(db, ticket=ticket, outcome=throttle.Outcome.SUCCESS, policy=policy)
        except (TemporaryError, SQLAlchemyError):
            with (
                contextlib.suppress(TemporaryError, SQLAlchemyError),
                transaction(self.factory) as db,
            ):
                throttle.settle(
                    db, ticket=ticket, outcome=throttle.Outcome.UNCHECKED, policy=policy
                )
            return replies.AUTH_TEMPFAIL
        except MailhostError:
            return replies.AUTH_INVALID
        log.info("auth ok client=%s user=%s", peer_ip, identity.address)
        return identity

    # ------------------------------------------------------------------ greeting
    async def handle_EHLO(
        self,
        server: Any,
        session: SmtpSession,
        envelope: SubmissionEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250 HELP"]

    async def handle_VRFY(
        self, server: Any, session: SmtpSession, envelope: SubmissionEnvelope, address: str
    ) -> str:
        return replies.VRFY_REPLY

    # ------------------------------------------------------------------ envelope
    async def handle_MAIL(
        self,
        server: Any,
        session: SmtpSession,
        envelope: SubmissionEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        reply = await self._mail(session, envelope, address, options)
        self.tracking.record_all(
            tracked.refusal(session, envelope, stage="MAIL", reply=reply, sender=address)
        )
        return reply

    async def _mail(
        self, session: SmtpSession, envelope: SubmissionEnvelope, address: str, options: list[str]
    ) -> str:
        identity = identity_of(session)
        if identity is None:  # aiosmtpd checks auth_required first; defence in depth
            return replies.AUTH_REQUIRED
        if address == "<>" or not address:
            return replies.NULL_SENDER
        if "@" not in address:
            return replies.BAD_SENDER
        try:
            checked: str | sending.SendingSnapshot = await self._blocking(
                self._check_sender, identity, address
            )
        except (SQLAlchemyError, TemporaryError, OSError):
            log.warning("sender check failed for %s", address, exc_info=True)
            return replies.TEMPFAIL
        if isinstance(checked, str):
            log.info("sender refused user=%s from=<%s> %s", identity.address, address, checked)
            return checked
        envelope.limits = checked
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.queue_id = queue_service.new_queue_id()
        envelope.local.clear()
        envelope.remote.clear()
        envelope.stored_keys.clear()
        return replies.SENDER_OK

    def _check_sender(self, identity: Identity, address: str) -> str | sending.SendingSnapshot:
        """One transaction: the sender policy, then may it send and would one more message
        pass a limit. The refusal (``553 5.7.1``, ``550 5.7.1``, ``450 4.7.1`` with the flag
        raised), or the limits snapshot the RCPT checks use."""
        now = utcnow()
        try:
            with transaction(self.factory) as db:
                if not may_send_as(db, mailbox_id=identity.mailbox_id, address=address):
                    return replies.SENDER_NOT_OWNED
                return sending.check_sending(
                    db, mailbox_id=identity.mailbox_id, now=now, recipients=0, limits=self.limits
                )
        except SendingDisabled as exc:
            return replies.sending_disabled(exc.text)
        except SendLimitExceeded as exc:
            self._limit_hit(identity, exc, now)
            return replies.limit_exceeded(exc.text)

    def _limit_hit(self, identity: Identity, error: SendLimitExceeded, now: dt.datetime) -> None:
        # Its own transaction: the refused message's work is rolled back, the flag stays.
        try:
            with transaction(self.factory) as db:
                sending.record_limit_hit(db, mailbox_id=identity.mailbox_id, error=error, now=now)
        except (SQLAlchemyError, MailhostError):
            log.exception("could not record the sending limit hit of %s", identity.address)

    async def handle_RCPT(
        self,
        server: Any,
        session: SmtpSession,
        envelope: SubmissionEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        reply = await self._rcpt(session, envelope, address, options)
        self.tracking.record_all(
            tracked.refusal(session, envelope, stage="RCPT", reply=reply, recipient=address)
        )
        if not reply.startswith("2"):
            metrics.refused("submission", "rcpt", reply)
        return reply

    async def _rcpt(
        self, session: SmtpSession, envelope: SubmissionEnvelope, address: str, options: list[str]
    ) -> str:
        if address == "<>":
            return replies.BAD_RCPT
        if len(envelope.rcpt_tos) >= self.settings.smtp_max_recipients:
            return replies.TOO_MANY_RECIPIENTS
        if address.lower() != POSTMASTER and routing_trick(address):
            return replies.ROUTING_REFUSED
        try:
            resolution = await self._blocking(self._resolve, address)
        except (SQLAlchemyError, TemporaryError, OSError):
            log.warning("recipient lookup failed for %s", address, exc_info=True)
            return replies.TEMPFAIL
        identity = identity_of(session)
        if identity is None:
            return replies.AUTH_REQUIRED
        if envelope.limits is None:  # aiosmtpd refuses RCPT before MAIL; defence in depth
            return replies.TEMPFAIL
        # Checked against the counters read at MAIL FROM, without a round trip: the exact,
        # counting check is consume_sending's in the transaction that queues the message.
        now = utcnow()
        try:
            envelope.limits.check(recipients=len(envelope.rcpt_tos) + 1, now=now)
        except SendLimitExceeded as exc:
            await self._blocking(self._limit_hit, identity, exc, now)
            return replies.limit_exceeded(exc.text)
        if resolution.verdict is Verdict.UNKNOWN_DOMAIN:
            try:
                remote = queue_service.clean_remote_address(address)
            except ValidationError:
                return replies.BAD_RCPT
            if remote.lower() not in {r.lower() for r in envelope.remote}:
                envelope.remote.append(remote)
        elif resolution.verdict is Verdict.OK and resolution.targets:
            for target in resolution.targets:
                envelope.local.setdefault(target.mailbox_id, (target, address))
        else:
            return replies.VERDICT_REPLIES.get(resolution.verdict, replies.TEMPFAIL)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return replies.RCPT_OK

    def _resolve(self, address: str) -> Any:
        with transaction(self.factory) as db:
            return resolve_recipient(
                db,
                address=address,
                store=self.store,
                postmaster_address=self.settings.postmaster_address,
            )

    # ------------------------------------------------------------------ DATA
    async def handle_DATA(
        self, server: Any, session: SmtpSession, envelope: SubmissionEnvelope
    ) -> str:
        started = time.monotonic()
        reply = await self._data(session, envelope)
        self.tracking.record_all(
            tracked.accepted(session, envelope, reply=reply, stored_keys=envelope.stored_keys)
        )
        if reply.startswith("2"):
            size = len(envelope.content) if isinstance(envelope.content, bytes) else 0
            metrics.message_accepted(
                "submission",
                copies=len(envelope.local),
                size=size,
                seconds=time.monotonic() - started,
            )
        else:
            metrics.refused("submission", "data", reply)
        return reply

    async def _data(self, session: SmtpSession, envelope: SubmissionEnvelope) -> str:
        identity = identity_of(session)
        content = envelope.content
        if identity is None or not isinstance(content, bytes):
            return replies.AUTH_REQUIRED
        message = msg.to_crlf(content)
        facts = msg.inspect_header(message)
        if not facts.from_addresses:
            return replies.FROM_MISSING
        if self.scanner is not None:
            refusal = await outbound_scan(
                self.scanner,
                content,
                identity_address=identity.address,
                client_ip=_peer_ip(session),
                helo=session.host_name,
                sender=envelope.mail_from,
                recipients=tuple(envelope.rcpt_tos),
                queue_id=envelope.queue_id,
                policy=self.scan_policy,
                flag=lambda reason: self._blocking(self._flag, identity.mailbox_id, reason),
            )
            if refusal is not None:
                return refusal
        date = email.utils.format_datetime(dt.datetime.now(dt.UTC))
        ssl_info = session.ssl if isinstance(session.ssl, dict) else {}
        cipher = ssl_info.get("cipher")
        trace = msg.received_field(
            helo=session.host_name or "unknown",
            client_ip=_peer_ip(session),
            hostname=self.settings.hostname,
            protocol="ESMTPSA" if session.ssl is not None else "ESMTPA",
            queue_id=envelope.queue_id,
            authenticated=identity.address,
            cipher=f"{cipher[1]} with cipher {cipher[0]}" if cipher else None,
            date=date,
        )
        prepared = (
            trace + msg.missing_fields(facts, hostname=self.settings.hostname, date=date) + message
        )
        try:
            reply: str = await self._blocking(
                self._deliver, identity, envelope, facts.from_addresses, prepared
            )
        except Exception as exc:
            cid = secrets.token_hex(4)
            log.exception("submission failed id=%s qid=%s", cid, envelope.queue_id)
            return (
                replies.storage_failure(exc)
                if isinstance(exc, OSError)
                else (
                    replies.internal_error(cid)
                    if not isinstance(exc, SQLAlchemyError | TemporaryError)
                    else replies.TEMPFAIL
                )
            )
        log.info(
            "qid=%s user=%s from=<%s> local=%d remote=%d size=%d result=%s",
            envelope.queue_id,
            identity.address,
            envelope.mail_from,
            len(envelope.local),
            len(envelope.remote),
            len(prepared),
            reply[:9],
        )
        return reply
