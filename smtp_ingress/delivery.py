"""The delivery job of the MX: one executor job per transaction stores every copy in its
Maildir, checks the mailboxes still exist, runs the forwarding / auto-reply plan, records the
tracking events and quota warnings, and writes the transaction's log line; and the trace
headers each copy starts with.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt

from aiosmtpd.smtp import Session as SmtpSession
from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from app import quota_warnings
from app.db import transaction
from app.delivery_rules import DeliveryRules, Plan, Recipient
from app.maildir import MailboxRef, MaildirStore
from app.maildir_stream import SpooledBody, deliver_spooled
from app.services.resolution import Target, existing_mailbox_ids
from app.tracking import Event
from smtp_ingress import replies
from smtp_ingress.envelope import ServerLike, Transaction
from smtp_ingress.scanning import StoredHeaders
from smtp_ingress.support import HandlerCore, ReceivedDate, TransactionLogLine, _peer_ip


class DeliveryJob(HandlerCore):
    """The handler's delivery room (mixed into ``IngressHandler``)."""

    session_factory: sessionmaker[Session]
    store: MaildirStore
    rules: DeliveryRules
    received_date: ReceivedDate

    def _deliver(
        self,
        targets: list[Target],
        copies: list[tuple[MailboxRef, bytes]],
        body: SpooledBody,
        line: TransactionLogLine | None,
        tracked: tuple[Event, list[str]] | None = None,
        rules_for: tuple[str, list[Recipient]] | None = None,
    ) -> int:
        """One executor job per transaction: store every copy (its trace header, then the
        body), drop the copies of mailboxes deleted meanwhile, log the transaction; returns
        how many copies were kept.

        Why the check after storing: a target was resolved at RCPT time (or up to
        ``smtp_resolution_cache_seconds`` earlier), and ``MaildirStore.deliver`` re-creates
        a Maildir that a deletion removed, where the next mailbox created at that address
        would find the message. Mailbox ids are never reused, so "id still exists" is exact.

        Why it is race-free: the check's query starts after every copy is renamed into
        ``new/``. A deletion commits its row first and removes the Maildir after its commit
        (``mailbox remove``, the portal, the API). If the check does not see the mailbox, we
        remove the copy ourselves. If it does see it, the deletion commits after the check
        began, hence after our rename, and its removal of the Maildir, which runs later
        still, takes our copy with it. Either way nothing is left for a later owner of the
        address. Semantically the copy was delivered and then deleted with its mailbox.

        Why all copies go back on a failure here: we could not tell which copies are safe,
        and a 451 makes the sender retry, so removing them loses nothing (no POP3 session
        has seen them: a POP3 maildrop is listed at login, which needs the database too).

        Forwards and auto-replies (``app.delivery_rules``): the plan is made before storing
        (a forward without a copy stores none), its forwards are queued in one commit after
        the check (a failure takes the copies back, as above), the auto-replies after that.
        """
        every = [t.mailbox_id for t in targets]
        rcpts = list(tracked[1]) if tracked is not None else [""] * len(targets)
        plan = self._plan(rules_for, copies, body)
        if plan is not None and plan.forwarded_only:
            kept_copies = [
                (t, c, r)
                for t, c, r in zip(targets, copies, rcpts, strict=True)
                if plan.keeps_copy(t.mailbox_id)
            ]
            targets = [t for t, _, _ in kept_copies]
            copies = [c for _, c, _ in kept_copies]
            rcpts = [r for _, _, r in kept_copies]
        try:
            stored = deliver_spooled(self.store, copies, body)
        except BaseException:
            if plan is not None:
                plan.discard()
            raise
        try:
            with self._read_connection() as connection:
                alive = existing_mailbox_ids(connection, ids=every)
            for target, info in zip(targets, stored, strict=True):
                if target.mailbox_id not in alive:
                    # The deletion's own removal of the Maildir may be running right now.
                    with contextlib.suppress(FileNotFoundError):
                        self.store.expunge(target.ref, [info])
            if plan is not None and plan.forwards:
                with transaction(self.session_factory) as session:
                    plan.enqueue(session, alive=alive)
        except BaseException:
            for target, info in zip(targets, stored, strict=True):
                with contextlib.suppress(OSError):
                    self.store.expunge(target.ref, [info])
            if plan is not None:
                plan.discard()
            raise
        kept = sum(1 for mailbox_id in every if mailbox_id in alive)
        if plan is not None:
            plan.send_auto_replies(self.session_factory)
        if tracked is not None:
            event = tracked[0]
            stored_at = dt.datetime.now(dt.UTC)
            self.tracking.record_all(
                [
                    dataclasses.replace(
                        event,
                        recipient=rcpt,
                        mailbox=target.address,
                        message_key=info.uid,
                        occurred_at=stored_at,
                    )
                    for target, info, rcpt in zip(targets, stored, rcpts, strict=True)
                    if target.mailbox_id in alive
                ]
            )
        quota_warnings.after_delivery(
            self.store,
            self.settings,
            (
                quota_warnings.Receiver(t.ref, t.address, t.quota_bytes)
                for t in targets
                if t.mailbox_id in alive
            ),
        )
        if line is not None:
            if kept != len(targets):
                result = line.result if kept else replies.RECIPIENTS_GONE[:9]
                gone = len(targets) - kept
                line = dataclasses.replace(line, copies=kept, result=f"{result} gone={gone}")
            line.write()
        return kept

    def _plan(
        self,
        rules_for: tuple[str, list[Recipient]] | None,
        copies: list[tuple[MailboxRef, bytes]],
        body: SpooledBody,
    ) -> Plan | None:
        """The forwarding / auto-reply plan of this delivery, or None when no rule applies."""
        if not rules_for:
            return None
        sender, recipients = rules_for
        plan = self.rules.prepare(
            self.session_factory,
            sender=sender,
            recipients=recipients,
            traces=[header for _, header in copies],
            body=body.read_chunks,
            head=body.removed_head or None,
        )
        return plan if plan.rules else None

    def _read_connection(self) -> contextlib.AbstractContextManager[Session | Connection]:
        """A read-only database connection for the check after storing: a Core connection of
        the factory's engine (no ORM session: this runs per message), or a
        session when the factory is not bound to an engine. Neither commits: closing ends the
        read transaction."""
        bind = getattr(self.session_factory, "kw", {}).get("bind")
        if isinstance(bind, Engine):
            return bind.connect()
        return self.session_factory()

    def _trace_headers(
        self,
        server: ServerLike,
        session: SmtpSession,
        txn: Transaction,
        target: Target,
        rcpt: str,
        scanned: StoredHeaders | None = None,
    ) -> bytes:
        """Return-Path, Delivered-To and an RFC 5321 section 4.4 Received header; after a
        scan, its result fields (and the rewritten header section, if any).

        Delivered-To names the mailbox; for a copy that came through the domain's catch-all
        (a multidrop mailbox) it names the envelope recipient instead, and X-Original-To
        repeats it (Postfix's name for it), so fetchmail's ``envelope Delivered-To`` (or
        ``envelope X-Original-To``) sorts the copies without guessing from To:/Cc:."""
        helo = session.host_name or "unknown"
        tls = session.ssl is not None
        protocol = ("ESMTPS" if tls else "ESMTP") if session.extended_smtp else "SMTP"
        tls_comment = ""
        if tls:
            cipher = session.ssl.get("cipher") if isinstance(session.ssl, dict) else None
            if cipher:
                tls_comment = f"\n\t(using {cipher[1]} with cipher {cipher[0]})"
        date = self.received_date.now()
        delivered_to = f"Delivered-To: {target.address}\n"
        if target.via_catchall:
            delivered_to = f"Delivered-To: {rcpt}\nX-Original-To: {rcpt}\n"
        trace = (
            f"Return-Path: <{txn.sender}>\n"
            f"{delivered_to}"
            f"Received: from {helo} ([{_peer_ip(session)}])\n"
            f"\tby {server.hostname} (Mailhost) with {protocol} id {txn.queue_id}{tls_comment}\n"
            f"\tfor <{rcpt}>; {date}\n"
        ).encode("utf-8", "surrogateescape")
        if scanned is not None:
            trace += scanned.added + (scanned.head or b"")
        return trace
