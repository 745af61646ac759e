"""Bounces to our SRS addresses at the MX: the RCPT decision and the DATA that queues them.

A remote forward leaves with the envelope sender rewritten to
``SRS0=HHHH=TT=origin.example=sender@<forwarding domain>`` (app/srs.py). When the next hop
bounces it, the DSN comes back here to that address; this room decodes it (srslib: the HMAC
and the day stamp are checked) and sends the DSN on to the original sender through the
outbound queue, as Postfix with postsrsd does.

Policy decisions (README "Mailbox users" repeats them):

* An RCPT whose local part is an SRS address (``SRS0=`` / ``SRS1=``, any case) at a hosted
  domain is decoded before any mailbox lookup, so a catch-all never takes it (postsrsd's
  recipient rewrite also runs before the lookup). At a domain that is not hosted it is
  handled as any other address there (relay domains: the customer's server decides).
* Only from the null sender ``<>``. Postfix + postsrsd decode for every sender; we are
  stricter: the reverse path of a forward is meant for DSNs (RFC 5321 section 4.5.5) and for
  auto-replies, which RFC 3834 section 3.3 wants sent with a null sender too. Accepting any
  sender would let whoever saw one SRS address send mail through us to its original sender
  for the 21 days it stays valid. Another sender gets ``550 5.7.1``.
* Forged (hash wrong), expired (day stamp older than 21 days) or malformed: ``550 5.1.1``
  and nothing is stored.
* Accepted: the DSN is spooled (fsync'd), queued with the null sender for the decoded
  address (origin ``forward``) and committed before the 250. Never an open relay: the only
  destination is the address the HMAC vouches for.
* SRS recipients are not mixed with other recipients in one transaction: the second kind
  gets ``452 4.5.3`` (RFC 5321 section 4.5.3.1.10: the client sends them again in another
  transaction), so a queue copy and Maildir copies never need a joint commit.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import secrets

from aiosmtpd.smtp import Session as SmtpSession
from sqlalchemy.orm import Session, sessionmaker

from app.db import transaction
from app.delivery_rules import DeliveryRules
from app.errors import ValidationError
from app.maildir_stream import SpooledBody
from app.models import ORIGIN_FORWARD, utcnow
from app.services import queue
from app.services.resolution import Verdict
from app.spool import SpoolStore
from app.tracking import Event
from smtp_ingress import replies
from smtp_ingress.envelope import ServerLike, Transaction
from smtp_ingress.support import HandlerCore, StatsBatcher, _peer_ip, log

SRS_FORGED = "550 5.1.1 Recipient address rejected: invalid or expired SRS address"
SRS_NOT_A_BOUNCE = "550 5.7.1 Recipient address rejected: SRS addresses accept bounces only"
SRS_SEPARATELY = "452 4.5.3 Too many recipients: send bounce recipients in a separate transaction"
SRS_RCPT_OK = "250 2.1.5 Recipient ok (bounce to be returned to the original sender)"
# Verdicts of a hosted domain (the SRS address names one of ours).
_HOSTED = frozenset(
    v for v in Verdict if v not in (Verdict.UNKNOWN_DOMAIN, Verdict.INVALID_ADDRESS)
)


def is_srs_address(address: str) -> bool:
    local = address.rpartition("@")[0].lower()
    return local.startswith(("srs0=", "srs1="))


class SrsBounces(HandlerCore):
    """The handler's SRS room (mixed into ``IngressHandler``)."""

    spool: SpoolStore
    session_factory: sessionmaker[Session]
    rules: DeliveryRules  # its rewriter made the SRS addresses, with the same key
    stats: StatsBatcher

    def srs_rcpt(self, txn: Transaction, address: str, verdict: Verdict) -> str | None:
        """The reply to ``RCPT TO:<address>`` when it is an SRS address at a hosted domain
        (the decoded recipient is noted in ``txn``), or None when the address is none."""
        if verdict not in _HOSTED or not is_srs_address(address):
            return None
        if txn.sender:
            return SRS_NOT_A_BOUNCE
        original = self.rules.srs.reverse(address)
        if original is None:
            return SRS_FORGED
        try:
            original = queue.clean_remote_address(original)
        except ValidationError:
            return SRS_FORGED
        if txn.targets or txn.relay:
            return SRS_SEPARATELY
        txn.srs.append((address, original))
        txn.accepted.append(address)
        return SRS_RCPT_OK

    def _track_srs(self, session: SmtpSession, txn: Transaction, address: str, reply: str) -> None:
        """The tracking event of an accepted SRS bounce recipient (as a hosted one's)."""
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
                detail="SRS bounce, returned to " + txn.srs[-1][1],
            )
        )

    def _store_srs(self, txn: Transaction, body: SpooledBody, trace: bytes) -> str:
        """Spool ``trace + body`` (CRLF, fsync'd) and commit one queue message from ``<>`` to
        the decoded addresses. Blocking: runs in the executor. Returns the queue id."""
        with self.spool.writer() as writer:
            writer.write(trace.replace(b"\n", b"\r\n"))
            body.write_to(lambda piece: writer.write(piece.replace(b"\n", b"\r\n")))
            spooled = writer.commit()
        try:
            with transaction(self.session_factory) as session:
                message = queue.enqueue(
                    session,
                    spool_id=spooled.spool_id,
                    size=spooled.size,
                    sender="",
                    recipients=[original for _, original in txn.srs],
                    origin=ORIGIN_FORWARD,
                    now=utcnow(),
                )
                queued = message.queue_id
        except BaseException:
            self.spool.remove(spooled.spool_id)
            raise
        log.info(
            "srs-bounce qid=%s to=%s queued=%s size=%d",
            txn.queue_id,
            ",".join(f"<{rcpt}> -> <{original}>" for rcpt, original in txn.srs),
            queued,
            spooled.size,
        )
        return queued

    async def _data_with_srs(
        self, server: ServerLike, session: SmtpSession, txn: Transaction, body: SpooledBody
    ) -> str:
        helo = session.host_name or "unknown"
        protocol = ("ESMTPS" if session.ssl else "ESMTP") if session.extended_smtp else "SMTP"
        date = email.utils.format_datetime(dt.datetime.now(dt.UTC))
        for_clause = f"\n\tfor <{txn.srs[0][0]}>" if len(txn.srs) == 1 else ""
        trace = (
            f"Received: from {helo} ([{_peer_ip(session)}])\n"
            f"\tby {self.settings.hostname} (Mailhost) with {protocol} id {txn.queue_id}"
            f"{for_clause}; {date}\n"
        ).encode("utf-8", "surrogateescape")
        try:
            await self._blocking(self._store_srs, txn, body, trace)
        except Exception as exc:
            cid = secrets.token_hex(4)
            log.exception("srs bounce queueing failed id=%s qid=%s", cid, txn.queue_id)
            return replies.delivery_failure(exc)
        self.stats.add(len(txn.srs))
        server.transaction_done()
        return replies.delivered(txn.queue_id)
