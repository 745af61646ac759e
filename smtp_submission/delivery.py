"""Submission's DATA storage (mixed into ``SubmissionHandler``): check the header From, sign,
store the hosted copies, spool and queue the remote ones, count the message; one executor job
and one database transaction, committed before the 250, everything taken back without it."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from app import quota_warnings
from app.config import Settings
from app.db import transaction
from app.delivery_rules import DeliveryRules, Plan, Recipient
from app.dkim import sign_message
from app.errors import SendingDisabled, SendLimitExceeded
from app.maildir import MailboxRef, MaildirStore, MessageInfo
from app.models import utcnow
from app.services import dkim as dkim_service
from app.services import queue as queue_service
from app.services import sending
from app.services.sending import may_send_as
from app.spool import SpoolStore
from smtp_submission import message as msg
from smtp_submission import replies
from smtp_submission.envelope import Identity, SubmissionEnvelope

if TYPE_CHECKING:
    import datetime as dt

log = logging.getLogger("smtp_submission")


class SubmissionDelivery:
    """The storing half of the submission handler; the handler sets these attributes."""

    settings: Settings
    factory: sessionmaker[Session]
    store: MaildirStore
    spool: SpoolStore
    rules: DeliveryRules
    limits: sending.SendingLimits

    def _limit_hit(self, identity: Identity, error: SendLimitExceeded, now: dt.datetime) -> None:
        raise NotImplementedError  # the handler's (it logs and flags)

    def _deliver(
        self,
        identity: Identity,
        envelope: SubmissionEnvelope,
        from_addresses: tuple[str, ...],
        prepared: bytes,
    ) -> str:
        """Check the header From, sign, store the local copies, spool, then queue the remote
        rows and count the message: one executor job and ONE database transaction (its reads
        first; its writes after the files are durable, committed before the 250).

        Any failure before that commit takes back what was stored (the local copies, the
        spool file): no 250, nothing kept; the client retries."""
        kept = _Kept()
        now = utcnow()
        try:
            with transaction(self.factory) as db:
                reply = self._store_and_queue(
                    db, identity, envelope, from_addresses, prepared, kept
                )
        except BaseException as exc:
            # No 250: take everything back (no POP3 session has listed the local copies:
            # a maildrop is listed at login, which needs the database too).
            for ref, info in kept.local:
                with contextlib.suppress(OSError):
                    self.store.expunge(ref, [info])
            if kept.spool_id is not None:
                with contextlib.suppress(OSError):
                    self.spool.remove(kept.spool_id)
            if kept.plan is not None:
                kept.plan.discard()
            if isinstance(exc, SendLimitExceeded):
                self._limit_hit(identity, exc, now)
                return replies.limit_exceeded(exc.text)
            if isinstance(exc, SendingDisabled):
                return replies.sending_disabled(exc.text)
            raise
        if kept.plan is not None:
            kept.plan.send_auto_replies(self.factory)
        if reply.startswith("2"):
            quota_warnings.after_delivery(
                self.store,
                self.settings,
                (
                    quota_warnings.Receiver(target.ref, target.address, target.quota_bytes)
                    for target, _ in envelope.local.values()
                ),
            )
        return reply

    def _store_and_queue(
        self,
        db: Session,
        identity: Identity,
        envelope: SubmissionEnvelope,
        from_addresses: tuple[str, ...],
        prepared: bytes,
        kept: _Kept,
    ) -> str:
        """The work of ``_deliver`` inside its transaction; ``kept`` says what was stored."""
        sender = envelope.mail_from or ""
        if not all(
            may_send_as(db, mailbox_id=identity.mailbox_id, address=a) for a in from_addresses
        ):
            log.info("From refused user=%s from=%s", identity.address, from_addresses)
            return replies.FROM_NOT_OWNED
        key = dkim_service.signing_key_for(db, domain=from_addresses[0].rpartition("@")[2])
        final = sign_message(prepared, key) if key is not None else prepared
        if envelope.local:
            lf = msg.to_lf(final)
            local = list(envelope.local.values())
            traces = [
                f"Return-Path: <{sender}>\nDelivered-To: {target.address}\n".encode()
                for target, _ in local
            ]
            # Forwarding and auto-replies of the hosted recipients (app/delivery_rules.py).
            plan = kept.plan = self.rules.prepare(
                self.factory,
                sender=sender,
                recipients=[Recipient(t.mailbox_id, t.address, r) for t, r in local],
                traces=traces,
                body=lambda: [lf],
            )
            copies: list[tuple[MailboxRef, list[bytes]]] = [
                (target.ref, [trace, lf])
                for (target, _), trace in zip(local, traces, strict=True)
                if plan.keeps_copy(target.mailbox_id)
            ]
            infos = self.store.deliver(copies)
            kept.local = [(ref, info) for (ref, _), info in zip(copies, infos, strict=True)]
            envelope.stored_keys = [info.uid for info in infos]
        now = utcnow()
        if envelope.remote:
            kept.spool_id = self.spool.write([final]).spool_id
            queued = queue_service.enqueue(
                db,
                spool_id=kept.spool_id,
                size=len(final),
                sender=sender,
                recipients=envelope.remote,
                origin="submission",
                now=now,
                customer_id=identity.customer_id,
            )
            # One id for the client's 250, our log and `mailhost queue show`.
            queued.queue_id = envelope.queue_id
        if kept.plan is not None:
            kept.plan.enqueue(db)
        sending.consume_sending(
            db,
            mailbox_id=identity.mailbox_id,
            recipients=len(envelope.rcpt_tos),
            now=now,
            limits=self.limits,
        )
        return replies.accepted(envelope.queue_id)


@dataclass(slots=True)
class _Kept:
    """What a submission stored before its commit: taken back if the commit never comes."""

    local: list[tuple[MailboxRef, MessageInfo]] = field(default_factory=list)
    spool_id: str | None = None
    plan: Plan | None = None  # forwards queued in the commit; auto-replies sent after it
