"""Recipient policy and delivery: aiosmtpd handler hooks that decide replies, never do I/O on
the socket, and run database and file work off the event loop.

Address policy decisions (written down as the brief asks):

* Domains are matched case-insensitively (``USER@HOSTED.EXAMPLE`` is delivered).
* A trailing-dot domain (``user@hosted.example.``) is not RFC 5321 syntax (section 4.1.2,
  ``Domain`` has no final dot); aiosmtpd's address parser refuses it, and we answer
  ``553 5.1.3`` (bad address syntax) rather than guessing. It is never relayed.
* Source routes (``<@hosted.example:user@foreign.example>``) are ignored as RFC 5321 section
  4.1.1.3 / appendix C says: the address is ``user@foreign.example``, i.e. relay -> 554 5.7.1.
* ``%`` / ``!`` hacks, quoted local parts and address literals are never hosted addresses:
  554 5.7.1 without asking the database.
* ``<Postmaster>`` without a domain (any case) is the platform postmaster (RFC 5321 sections
  4.1.1.3 and 4.5.1: it MUST be accepted), ``Settings.postmaster_address``; without one it is
  ``550 5.1.1`` saying that no postmaster mailbox is configured. aiosmtpd's parser also maps
  ``< Postmaster>``, ``<"Postmaster">`` and ``<@relay:Postmaster>`` to ``Postmaster``; those
  are taken as the same (liberal in what we accept; none of them can reach a foreign host).
"""

from __future__ import annotations

import secrets
import time
from concurrent.futures import Executor

from aiosmtpd.smtp import Session as SmtpSession
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app import hourly, metrics
from app.config import Settings
from app.db import engine_of, transaction
from app.delivery_rules import DeliveryRules, Recipient
from app.errors import TemporaryError
from app.maildir import MaildirStore
from app.maildir_stream import SpooledBody, spool_body
from app.scanning.decision import Decision, ScanPolicy
from app.services.resolution import POSTMASTER, Resolution, Verdict, resolve_recipient
from app.services.scan_policy import DomainScanRules
from app.spool import SpoolStore
from app.spool_body import SpoolSpilledBody
from app.tracking import Event, EventWriter
from smtp_ingress import relay as relay_edge
from smtp_ingress import replies
from smtp_ingress.envelope import IngressEnvelope, ServerLike, Transaction
from smtp_ingress.relay import RelayDesk
from smtp_ingress.relay_data import RelayData
from smtp_ingress.scanning import ScanGlue, Scanned, ScanStep, StoredHeaders
from smtp_ingress.srs_bounce import SRS_SEPARATELY, SrsBounces

# The small parts live in smtp_ingress/support.py; re-exported here for the modules and tests
# that import them from the handler (server.py, tests/protocol/test_smtp_units.py).
from smtp_ingress.support import (
    LoopCompletions,
    QueueIds,
    ReceivedDate,
    ResolutionCache,
    StatsBatcher,
    TransactionLogLine,
    _has_control,
    _peer_ip,
    _relay_trick,
    log,
)

__all__ = [
    "IngressHandler",
    "LoopCompletions",
    "QueueIds",
    "ReceivedDate",
    "ResolutionCache",
    "StatsBatcher",
    "TransactionLogLine",
]


class IngressHandler(RelayData, ScanGlue, SrsBounces):
    """The aiosmtpd handler: HELO/EHLO, MAIL, RCPT policy, DATA delivery, error mapping.

    Its rooms are mixed in: the scan glue (smtp_ingress/scanning.py), relay recipients and
    relay DATA (smtp_ingress/relay_data.py), the delivery job and trace headers
    (smtp_ingress/delivery.py), bounces to SRS addresses (smtp_ingress/srs_bounce.py), the
    shared state, executor bridge and records (smtp_ingress/support.py)."""

    def __init__(
        self,
        settings: Settings,
        *,
        session_factory: sessionmaker[Session],
        store: MaildirStore,
        executor: Executor,
        stats_batcher: StatsBatcher,
        spool: SpoolStore | None = None,
        scan_step: ScanStep | None = None,
        tracking: EventWriter | None = None,
    ) -> None:
        self.settings = settings
        self.tracking = tracking or EventWriter.disabled()
        self.scan_step = scan_step
        self.scan_policy = ScanPolicy(
            reject_score=settings.scan_reject_score,
            tag_score=settings.scan_tag_score,
            subject_tag=settings.scan_subject_tag,
            greylisting=settings.scan_greylisting,
        )
        # Scan rules per hosted domain, reused as briefly as recipient resolutions.
        self._rules_cache = {}
        self.session_factory = session_factory
        self.engine = engine_of(session_factory)
        self.store = store
        self.executor = executor
        self.stats = stats_batcher
        self.resolutions = ResolutionCache(settings.smtp_resolution_cache_seconds)
        self.queue_ids = QueueIds()
        self.received_date = ReceivedDate()
        self._completions: LoopCompletions | None = None
        self.spool = spool or SpoolStore(settings.spool_root)
        self.relay = RelayDesk(
            settings, session_factory=session_factory, spool=self.spool, blocking=self._blocking
        )
        # Forwarding and auto-replies of the recipients' mailboxes (app/delivery_rules.py).
        self.rules = DeliveryRules(settings, spool=self.spool)

    # ------------------------------------------------------------------ greeting commands
    async def handle_HELO(
        self, server: ServerLike, session: SmtpSession, envelope: IngressEnvelope, hostname: str
    ) -> str:
        if _has_control(hostname) or " " in hostname.strip():
            server.note_junk()
            return "501 5.5.4 Syntax: HELO hostname"
        session.host_name = hostname
        envelope.txn = None
        return f"250 {server.hostname}"

    async def handle_EHLO(
        self,
        server: ServerLike,
        session: SmtpSession,
        envelope: IngressEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        if _has_control(hostname) or " " in hostname.strip():
            server.note_junk()
            return ["501 5.5.4 Syntax: EHLO hostname"]
        session.host_name = hostname
        # No AUTH on an MX (aiosmtpd would offer it after STARTTLS).
        lines = [r for r in responses[:-1] if not r.startswith("250-AUTH")]
        lines += ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-ETRN", "250 HELP"]
        return lines

    async def handle_NOOP(
        self, server: ServerLike, session: SmtpSession, envelope: IngressEnvelope, arg: str
    ) -> str:
        server.note_noop()
        return replies.NOOP_OK

    async def handle_RSET(
        self, server: ServerLike, session: SmtpSession, envelope: IngressEnvelope
    ) -> str:
        server.note_noop()
        return replies.RSET_OK

    async def handle_VRFY(
        self, server: ServerLike, session: SmtpSession, envelope: IngressEnvelope, address: str
    ) -> str:
        # No user enumeration (RFC 5321 section 3.5.3 allows 252).
        server.note_noop()
        return replies.VRFY_REPLY

    async def handle_ETRN(
        self, server: ServerLike, session: SmtpSession, envelope: IngressEnvelope, arg: str | None
    ) -> str:
        """RFC 1985 (smtp_ingress/relay.py has the policy)."""
        server.note_noop()
        if envelope.txn is not None:
            return relay_edge.ETRN_IN_TRANSACTION
        return await self.relay.etrn(_peer_ip(session), arg)

    # ------------------------------------------------------------------ envelope
    async def handle_MAIL(
        self,
        server: ServerLike,
        session: SmtpSession,
        envelope: IngressEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        sender = "" if address == "<>" else address
        if _has_control(sender) or (sender and "@" not in sender):
            self._track_refusal(session, None, "MAIL", replies.BAD_SENDER, sender=sender)
            return replies.BAD_SENDER
        envelope.mail_from = sender if sender else "<>"
        envelope.mail_options.extend(options)
        envelope.txn = Transaction(queue_id=self.queue_ids.next(), sender=sender)
        return replies.SENDER_OK

    async def handle_RCPT(
        self,
        server: ServerLike,
        session: SmtpSession,
        envelope: IngressEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        reply = await self._rcpt(server, session, envelope, address, options)
        if not reply.startswith("2"):
            metrics.refused("smtp", "rcpt", reply)
            hourly.add("refused")
        return reply

    async def _rcpt(
        self,
        server: ServerLike,
        session: SmtpSession,
        envelope: IngressEnvelope,
        address: str,
        options: list[str],
    ) -> str:
        txn = envelope.txn
        assert txn is not None  # aiosmtpd answers 503 to RCPT before MAIL
        if address == "<>":
            self._track_refusal(session, txn, "RCPT", replies.BAD_RCPT, rcpt=address)
            return replies.BAD_RCPT
        if len(txn.accepted) >= self.settings.smtp_max_recipients:
            self._track_refusal(session, txn, "RCPT", replies.TOO_MANY_RECIPIENTS, rcpt=address)
            return replies.TOO_MANY_RECIPIENTS
        if address.lower() != POSTMASTER and _relay_trick(address):
            self._log_reject(session, txn, address, replies.RELAY_DENIED)
            return replies.RELAY_DENIED
        key = address.lower()
        resolution = txn.cache.get(key) or self.resolutions.get(key)
        if resolution is None:
            try:
                resolved, rules = await self._blocking(self._resolve, address)
            except (SQLAlchemyError, TemporaryError, OSError):
                # Database unreachable or similar: always temporary, never a 5xx.
                log.warning("recipient lookup failed for %s", address, exc_info=True)
                self._track_refusal(session, txn, "RCPT", replies.TEMPFAIL, rcpt=address)
                return replies.TEMPFAIL
            resolution = resolved
            self.resolutions.put(key, resolution)
            self._keep_rules(rules)
        txn.cache[key] = resolution
        srs_reply = self.srs_rcpt(txn, address, resolution.verdict)
        if srs_reply is not None:
            if srs_reply[:1] != "2":
                self._log_reject(session, txn, address, srs_reply)
                return srs_reply
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
            self._track_srs(session, txn, address, srs_reply)
            return srs_reply
        if txn.srs:  # an SRS bounce is queued on its own (smtp_ingress/srs_bounce.py)
            self._log_reject(session, txn, address, SRS_SEPARATELY)
            return SRS_SEPARATELY
        if resolution.verdict is Verdict.UNKNOWN_DOMAIN:
            relay_reply = await self._relay_rcpt(session, txn, address)
            if relay_reply is not None:
                if relay_reply[:1] != "2":
                    self._log_reject(session, txn, address, relay_reply)
                    return relay_reply
                envelope.rcpt_tos.append(address)
                envelope.rcpt_options.extend(options)
                return relay_reply
        reply = replies.VERDICT_REPLIES[resolution.verdict]
        if resolution.verdict is not Verdict.OK or not resolution.targets:
            self._log_reject(session, txn, address, reply)
            return reply if resolution.verdict is not Verdict.OK else replies.TEMPFAIL
        # The recipient domains' block and allow lists apply with scanning on or off.
        refusal = await self._list_check(session, txn, resolution.targets)
        if refusal is not None:
            self._log_reject(session, txn, address, refusal)
            domain = resolution.targets[0].ref.domain
            self._record_rejection(session, txn, domain, address, None)
            return refusal
        for target in resolution.targets:
            copy_key = (target.mailbox_id, key) if target.via_catchall else target.mailbox_id
            txn.targets.setdefault(copy_key, (target, address))
        txn.accepted.append(address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        self.tracking.record(
            Event(
                kind="received",
                service="mx",
                queue_id=txn.queue_id,
                client_ip=_peer_ip(session),
                helo=session.host_name,
                sender=txn.sender,
                recipient=address,
                stage="RCPT",
                reply=reply,
                detail="resolved to " + ", ".join(t.address for t in resolution.targets),
            )
        )
        return reply

    def _resolve(self, address: str) -> tuple[Resolution, dict[str, DomainScanRules]]:
        """The resolution, and the scan rules of its target domains (one job, one
        connection). A Core connection, not a Session: resolution only SELECTs, and a
        Session's unit of work and ORM layer cost more Python time per RCPT than the query
        itself (bench/resolution.py prints both)."""
        if self.engine is None:  # a stand-in session factory (tests): through a Session
            with transaction(self.session_factory) as session:
                return resolve_recipient(
                    session,
                    address=address,
                    store=self.store,
                    postmaster_address=self.settings.postmaster_address,
                ), {}
        with self.engine.connect() as connection:
            resolution = resolve_recipient(
                connection,
                address=address,
                store=self.store,
                postmaster_address=self.settings.postmaster_address,
            )
            return resolution, self._rules_along(connection, resolution.targets)

    # ------------------------------------------------------------------ delivery
    def open_body(self, envelope: IngressEnvelope) -> SpooledBody:
        """Where the protocol streams the decoded body: in memory, spilling past 256 KiB
        into the first recipient's ``tmp/`` (nothing is created until then)."""
        txn = envelope.txn
        assert txn is not None and (txn.targets or txn.relay or txn.srs)  # an accepted RCPT
        if not txn.targets:  # relay or SRS recipients only: spill into the outbound spool
            return SpoolSpilledBody(self.spool)
        first, _ = next(iter(txn.targets.values()))
        return spool_body(self.store, first.ref)

    async def flush_body(self, body: SpooledBody) -> None:
        """Write what the body holds in memory to its spill file, off the event loop."""
        await self._blocking(body.flush)

    def discard_body(self, body: SpooledBody) -> None:
        """Drop the body and its spill file, off the loop and without waiting: this runs in
        ``finally`` blocks of cancelled coroutines too (connection lost, deadline). A body
        that never spilled is only memory: dropped here, with no job for a worker thread
        (one executor hand-off per message less: bench/profile_ingress.py)."""
        if body.discard_if_in_memory():
            return
        try:
            self.executor.submit(body.discard)
        except RuntimeError:  # executor shut down (server stopping): cheap enough inline
            body.discard()

    async def handle_DATA(
        self, server: ServerLike, session: SmtpSession, envelope: IngressEnvelope
    ) -> str:
        txn = envelope.txn
        body = envelope.body
        assert txn is not None and body is not None  # set by IngressSMTP.smtp_DATA
        if await self._loops(body):
            # RFC 5321 section 6.3: a mail loop; the whole message is refused at DATA.
            self._track_refusal(session, txn, "DATA", relay_edge.LOOP_REFUSED)
            log.info("reject qid=%s client=%s: mail loop", txn.queue_id, _peer_ip(session))
            metrics.refused("smtp", "data", relay_edge.LOOP_REFUSED)
            hourly.add("refused")
            return relay_edge.LOOP_REFUSED
        if txn.srs:  # a bounce on its way back to the original sender: not scanned
            return await self._data_with_srs(server, session, txn, body)
        targets = [target for target, _ in txn.targets.values()]
        scanned: list[StoredHeaders | None] = [None] * len(targets)
        decision: Decision | None = None
        outcome: Scanned | None = None
        if self.scan_step is not None:  # hosted and relay recipients alike
            scan = await self._scan(session, txn, body)
            if isinstance(scan, str):
                return scan
            outcome = scan
            decision = outcome.decision
            scanned = list(outcome.hosted)
        if txn.relay:
            return await self._data_with_relay(server, session, txn, body, outcome)
        reply = replies.delivered(txn.queue_id)
        # What each stored copy's event says, taken here on the loop (the session is ours).
        stored_event = Event(
            kind="stored",
            service="mx",
            queue_id=txn.queue_id,
            client_ip=_peer_ip(session),
            helo=session.host_name,
            sender=txn.sender,
            stage="DATA",
            reply=reply,
            detail=f"size={body.size}" + (f" {decision.log_fields()}" if decision else ""),
        )
        tracked = (stored_event, [rcpt for _, rcpt in txn.targets.values()])
        copies = [
            (target.ref, self._trace_headers(server, session, txn, target, rcpt, extra))
            for (target, rcpt), extra in zip(txn.targets.values(), scanned, strict=True)
        ]
        started = time.monotonic()
        # The transaction's log line is written by the delivery job after the copies are
        # stored, so the event loop never waits on log I/O; its fields are taken here.
        line = self._transaction_line(session, txn, body.size, reply[:9], decision)
        recipients = [Recipient(t.mailbox_id, t.address, r) for t, r in txn.targets.values()]
        try:
            kept = await self._blocking(
                self._deliver,
                targets,
                copies,
                body,
                line,
                tracked if self.tracking.enabled else None,
                (txn.sender, recipients),
            )
        except Exception as exc:
            cid = secrets.token_hex(4)
            log.exception("delivery failed id=%s qid=%s", cid, txn.queue_id)
            refusal = replies.delivery_failure(exc)
            failed = self._transaction_line(session, txn, body.size, f"{refusal[:9]} ref={cid}")
            if failed is not None:
                failed.write()
            self._track_refusal(session, txn, "DATA", refusal)
            metrics.refused("smtp", "data", refusal)
            hourly.add("refused")
            return refusal
        if not kept:
            self._track_refusal(session, txn, "DATA", replies.RECIPIENTS_GONE)
            return replies.RECIPIENTS_GONE
        self.stats.add(kept)
        metrics.message_accepted(
            "smtp", copies=kept, size=body.size, seconds=time.monotonic() - started
        )
        hourly.add("received", kept)
        server.transaction_done()
        return reply

    async def _loops(self, body: SpooledBody) -> bool:
        """More than 30 Received fields (RFC 5321 section 6.3); a spilled body's head is
        read off the loop."""
        limit = 256 * 1024
        head = await self._blocking(body.head, limit) if body.spilled else body.head(limit)
        return relay_edge.too_many_received(head)

    # ------------------------------------------------------------------ errors and logs
    async def handle_exception(self, error: Exception) -> str:
        cid = secrets.token_hex(4)
        log.error("handler error id=%s", cid, exc_info=error)
        return replies.internal_error(cid)
