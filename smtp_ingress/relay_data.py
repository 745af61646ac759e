"""Relay domains in the MX transaction: the RCPT answer for a relay domain's recipient and
DATA for a transaction with relay recipients (smtp_ingress/relay.py has the policy and the
queue side; this module is the handler's part, kept apart so neither file grows past ~400
lines).
"""

from __future__ import annotations

import dataclasses
import secrets

from aiosmtpd.smtp import Session as SmtpSession
from sqlalchemy.exc import SQLAlchemyError

from app.errors import TemporaryError, ValidationError
from app.maildir_stream import SpooledBody
from smtp_ingress import relay as relay_edge
from smtp_ingress import replies
from smtp_ingress.delivery import DeliveryJob
from smtp_ingress.envelope import ServerLike, Transaction
from smtp_ingress.relay import RelayDesk
from smtp_ingress.scanning import ScanGlue, Scanned
from smtp_ingress.support import StatsBatcher, _peer_ip, log


class RelayData(DeliveryJob, ScanGlue):
    """The handler's relay room (mixed into ``IngressHandler``)."""

    relay: RelayDesk
    stats: StatsBatcher

    async def _relay_rcpt(self, session: SmtpSession, txn: Transaction, address: str) -> str | None:
        """The reply for a relay domain's recipient (accepted ones are noted in ``txn``), or
        None when the domain is no relay domain either. The relay domain's block list is
        applied before any recipient check (a callout costs a connection)."""
        try:
            info = await self.relay.info(address.rpartition("@")[2])
            if info is None:
                return None
            refusal = await self._relay_list_check(session, txn, info.name, address)
            if refusal is not None:
                return refusal
            reply = await self.relay.rcpt(info, address)
        except (SQLAlchemyError, TemporaryError, OSError):
            log.warning("relay recipient lookup failed for %s", address, exc_info=True)
            return replies.TEMPFAIL
        if reply[:1] == "2":
            txn.relay.append((address, info))
            txn.accepted.append(address)
        return reply

    async def _data_with_relay(
        self,
        server: ServerLike,
        session: SmtpSession,
        txn: Transaction,
        body: SpooledBody,
        scanned: Scanned | None = None,
    ) -> str:
        """DATA for a transaction with relay recipients (and maybe hosted ones), after the
        scan (``scanned``: what each copy gets, None with scanning off): the queue copy is
        spooled and committed first, then the Maildir copies; if those fail the queue copy
        is taken back and the client retries the whole message (451)."""
        helo = session.host_name or "unknown"
        trace = self.relay.trace_header(
            helo=helo,
            client_ip=_peer_ip(session),
            protocol=("ESMTPS" if session.ssl else "ESMTP") if session.extended_smtp else "SMTP",
            queue_id=txn.queue_id,
            rcpts=[a for a, _ in txn.relay],
        )
        if scanned is not None and scanned.relay is not None:
            trace += scanned.relay.added + (scanned.relay.head or b"")
        copy = relay_edge.RelayCopy(
            queue_id=txn.queue_id,
            sender=txn.sender,
            recipients=tuple(txn.relay),
            trace_header=trace,
        )
        targets = [target for target, _ in txn.targets.values()]
        hosted = scanned.hosted if scanned is not None else [None] * len(targets)
        copies = [
            (target.ref, self._trace_headers(server, session, txn, target, rcpt, extra))
            for (target, rcpt), extra in zip(txn.targets.values(), hosted, strict=True)
        ]
        reply = replies.delivered(txn.queue_id)
        decision = scanned.decision if scanned is not None else None
        line = self._transaction_line(session, txn, body.size, reply[:9], decision)
        if line is not None:
            line = dataclasses.replace(line, copies=len(targets) + len(txn.relay))

        def job() -> int:
            stored = self.relay.store(copy, body)
            if not targets:
                if line is not None:
                    line.write()
                return len(txn.relay)
            try:
                return len(txn.relay) + self._deliver(targets, copies, body, line)
            except BaseException:
                self.relay.unstore(*stored)
                raise

        try:
            kept = await self._blocking(job)
        except ValidationError:  # a sender the queue cannot hold (queue.clean_remote_address)
            return relay_edge.BAD_SENDER_FOR_RELAY
        except Exception as exc:
            cid = secrets.token_hex(4)
            log.exception("relay delivery failed id=%s qid=%s", cid, txn.queue_id)
            return replies.delivery_failure(exc)
        self.stats.add(kept)
        server.transaction_done()
        return reply
