"""The content scan after the final dot: the ingress side of ``app.scanning``.

``ScanStep.run`` scans the decoded body before anything is stored, so the verdict decides the
reply (issue 13): spam ``550 5.7.1``, a virus ``554 5.7.1``, a scanner that is down or slow
``451 4.7.1`` (never a 5xx for our own failure). Mail that is stored gets, in each copy's own
header (after the trace fields): ``Authentication-Results`` with our authserv-id, and for
tagged mail ``X-Spam-Status`` / ``X-Spam-Score``; forged ``Authentication-Results`` carrying
our authserv-id are removed and the subject tag applied by rewriting the header section once
(``SpooledBody.cut_head``: the body keeps everything after it).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from dataclasses import dataclass

from aiosmtpd.smtp import Session as SmtpSession
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app import hourly, metrics
from app.db import transaction
from app.maildir_stream import SpooledBody
from app.scanning import headers
from app.scanning.clients import ScanEnvelope
from app.scanning.decision import Action, Decision, ScanPolicy
from app.scanning.scanner import Scanner
from app.services.resolution import Target
from app.services.scan_log import RejectionRecord
from app.services.scan_policy import DomainScanRules, most_lenient, rules_for_domain
from smtp_ingress.envelope import CopyRules, Transaction
from smtp_ingress.support import (
    _RESOLUTION_CACHE_MAX,
    HandlerCore,
    StatsBatcher,
    _peer_ip,
    log,
)

# At RCPT: the sender or client is on the recipient domain's block list (per recipient).
BLOCKED = "550 5.7.1 Recipient address rejected: sender blocked by the recipient's policy"


def reply_for(decision: Decision, queue_id: str) -> str | None:
    """The refusal for ``decision``, or None when the message is to be stored."""
    if decision.action is Action.REJECT:
        return f"550 5.7.1 Message rejected as spam ({decision.reason}), queue id {queue_id}"
    if decision.action is Action.VIRUS:
        return f"554 5.7.1 Message rejected: {decision.reason}, queue id {queue_id}"
    if decision.action is Action.TEMPFAIL:
        return f"451 4.7.1 Message not accepted now ({decision.reason}), try again later"
    return None


def scanner_verdict(action: Action, outcome: str) -> tuple[str, str]:
    """The labels of ``app.metrics.scanner_verdict`` for one scan: a virus is clamd's verdict,
    everything else rspamd's ("spam" when rejected or tagged, "error" when the scan failed
    or was deferred, else "clean"; an allow-listed message counts as clean)."""
    if action is Action.VIRUS:
        return "clamd", "virus"
    if outcome in ("rejected", "tagged"):
        return "rspamd", "spam"
    if outcome in ("unscanned", "deferred"):
        return "rspamd", "error"
    return "rspamd", "clean"


@dataclass(frozen=True, slots=True)
class Scanned:
    """A message the scan lets through: the decision, what each hosted copy gets (in the
    order of ``Transaction.targets``) and what the relay queue copy gets (None without
    relay recipients)."""

    decision: Decision
    hosted: list[StoredHeaders]
    relay: StoredHeaders | None


@dataclass(frozen=True, slots=True)
class StoredHeaders:
    """What each stored copy gets after its trace fields: the added fields and, when the
    header section was rewritten, the new section (the body then starts after the old one)."""

    added: bytes
    head: bytes | None


class ScanStep:
    def __init__(self, scanner: Scanner, *, authserv_id: str) -> None:
        self.scanner = scanner
        self.authserv_id = authserv_id

    async def scan(
        self, content: bytes, envelope: ScanEnvelope, policy: ScanPolicy, *, spam_check: bool
    ) -> Decision:
        return await self.scanner.scan(content, envelope, policy, spam_check=spam_check)

    def stored_headers(
        self,
        content: bytes,
        decision: Decision,
        copies: list[CopyRules],
        *,
        sender: str,
        helo: str | None,
    ) -> tuple[list[StoredHeaders], bytes]:
        """What each copy gets (in the order of ``copies``), and the old header section to
        cut from the body (b"" when every copy keeps it as it is). Tagging is per copy: the
        copy's own domain's tag threshold and subject tag; an allow-listed copy is never
        tagged."""
        old = headers.split_head(content)
        stripped, removed = headers.strip_forged(old, self.authserv_id)
        results = headers.authentication_results(
            self.authserv_id,
            decision.result,
            sender=sender,
            helo=helo,
            from_domain=headers.from_domain(old),
        )
        planned: list[tuple[bytes, bytes | None]] = []
        for copy in copies:
            added = results
            head: bytes | None = None
            if decision.action is Action.UNSCANNED:
                added += f"X-Mailhost-Scan: unscanned ({decision.reason})\n".encode()
            elif decision.score is not None:
                spam = not copy.allowed and decision.score >= copy.policy.tag_score
                added += headers.spam_headers(
                    score=decision.score,
                    threshold=copy.policy.tag_score,
                    spam=spam,
                    symbols=list(decision.symbols),
                )
                if spam and copy.policy.subject_tag:
                    head = headers.tag_subject(stripped, copy.policy.subject_tag)
            planned.append((added, head))
        if not removed and all(head is None for _, head in planned):
            return [StoredHeaders(added, None) for added, _ in planned], b""
        return [
            StoredHeaders(added, stripped if head is None else head) for added, head in planned
        ], old


def cut(body: SpooledBody, old_head: bytes) -> None:
    """Blocking when spilled: run on a worker thread."""
    body.cut_head(old_head)


class ScanGlue(HandlerCore):
    """The handler's scan room (mixed into ``IngressHandler``): the recipient domains' lists
    at RCPT (with a small cache of their rules; applied whether or not scanners are
    configured), the scan after the final dot (hosted and relay recipients alike), and the
    counting of its outcome (``StatsBatcher.add_scan`` and ``app.metrics.scanner_verdict``)."""

    scan_step: ScanStep | None
    scan_policy: ScanPolicy
    session_factory: sessionmaker[Session]
    engine: Engine | None
    stats: StatsBatcher
    _rules_cache: dict[str, tuple[float, DomainScanRules]]

    async def _list_check(
        self, session: SmtpSession, txn: Transaction, targets: tuple[Target, ...]
    ) -> str | None:
        """The recipient domains' block and allow lists, before any scan: a block refuses
        this recipient (550 5.7.1); an allow marks its copies as not to be spam-checked."""
        for target in targets:
            rules = await self._domain_rules(target.ref.domain)
            verdict = rules.verdict(sender=txn.sender, client_ip=_peer_ip(session))
            if verdict == "block":
                return BLOCKED
            txn.scan_rules[target.mailbox_id] = CopyRules(rules.policy, verdict == "allow")
        return None

    async def _relay_list_check(
        self, session: SmtpSession, txn: Transaction, domain: str, address: str
    ) -> str | None:
        """The same for a relay domain's recipient (the relay domain's own lists and policy):
        a block refuses it (and is recorded as a rejection), else its rules are noted."""
        rules = await self._domain_rules(domain)
        verdict = rules.verdict(sender=txn.sender, client_ip=_peer_ip(session))
        if verdict == "block":
            self._record_rejection(session, txn, domain, address, None)
            return BLOCKED
        txn.relay_rules[address.lower()] = CopyRules(rules.policy, verdict == "allow")
        return None

    def _relay_copy_rules(self, txn: Transaction) -> CopyRules | None:
        """The rules of the one queue copy all relay recipients share: the most lenient of
        their domains' policies (tagged only at the highest tag threshold), allow-listed only
        when every relay recipient is."""
        if not txn.relay:
            return None
        rules = [
            txn.relay_rules.get(address.lower(), CopyRules(self.scan_policy))
            for address, _ in txn.relay
        ]
        policy = most_lenient([r.policy for r in rules])
        policy = dataclasses.replace(policy, tag_score=max(r.policy.tag_score for r in rules))
        return CopyRules(policy, all(r.allowed for r in rules))

    async def _domain_rules(self, domain: str) -> DomainScanRules:
        now = time.monotonic()
        cached = self._rules_cache.get(domain)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            rules = await self._blocking(self._load_rules, domain)
        except (SQLAlchemyError, OSError):
            log.warning("scan policy lookup failed for %s; using the defaults", domain)
            return DomainScanRules(self.scan_policy)
        self._keep_rules({domain: rules}, now)
        return rules

    def _keep_rules(self, found: dict[str, DomainScanRules], now: float | None = None) -> None:
        """Cache rules read on a worker thread (loop thread only)."""
        until = (now or time.monotonic()) + self.settings.smtp_resolution_cache_seconds
        for domain, rules in found.items():
            if len(self._rules_cache) >= _RESOLUTION_CACHE_MAX:
                self._rules_cache.clear()
            self._rules_cache[domain] = (until, rules)

    def _rules_along(
        self, connection: Connection, targets: tuple[Target, ...]
    ) -> dict[str, DomainScanRules]:
        """In the RCPT's resolution job, on its connection: the rules of the target domains
        the cache has no fresh entry for, so ``_list_check`` needs no second job (a thread
        hand-off per new domain: with 10,000 domains, most RCPTs). A worker reading the
        loop's dict: each ``get`` is atomic; a stale answer costs one query, no more."""
        now = time.monotonic()
        found: dict[str, DomainScanRules] = {}
        for target in targets:
            domain = target.ref.domain
            cached = self._rules_cache.get(domain)
            if domain in found or (cached is not None and cached[0] > now):
                continue
            found[domain] = rules_for_domain(
                connection, domain_name=domain, defaults=self.scan_policy
            )
        return found

    def _load_rules(self, domain: str) -> DomainScanRules:
        if self.engine is not None:
            with self.engine.connect() as connection:
                return rules_for_domain(connection, domain_name=domain, defaults=self.scan_policy)
        with transaction(self.session_factory) as session:  # a stand-in factory (tests)
            return rules_for_domain(session, domain_name=domain, defaults=self.scan_policy)

    async def _scan(
        self, session: SmtpSession, txn: Transaction, body: SpooledBody
    ) -> str | Scanned:
        """Scan the body (smtp_ingress/scanning.py): a refusal, or what to add when storing.
        Relay recipients are scanned with their relay domains' policies, before their queue
        rows are committed; the relay queue copy is the last of the copies tagged."""
        step = self.scan_step
        assert step is not None
        content = await self._blocking(body.read_all) if body.spilled else body.read_all()
        hosted = [
            txn.scan_rules.get(target.mailbox_id, CopyRules(self.scan_policy))
            for target, _ in txn.targets.values()
        ]
        relay_copy = self._relay_copy_rules(txn)
        copies = hosted + ([relay_copy] if relay_copy is not None else [])
        checked = [copy.policy for copy in copies if not copy.allowed]
        # An allow-listed recipient counts as "never reject"; only when every copy is
        # allow-listed is rspamd not asked at all (clamd still is).
        policy = most_lenient(checked) if checked else copies[0].policy
        if len(checked) < len(copies):
            policy = dataclasses.replace(policy, reject_score=float("inf"))
        envelope = ScanEnvelope(
            client_ip=_peer_ip(session),
            helo=session.host_name,
            sender=txn.sender,
            recipients=tuple(txn.accepted),
            queue_id=txn.queue_id,
        )
        decision = await step.scan(content, envelope, policy, spam_check=bool(checked))
        refusal = reply_for(decision, txn.queue_id)
        self._count_scan(session, txn, decision)
        if refusal is not None:
            line = self._transaction_line(session, txn, body.size, refusal[:9], decision)
            if line is not None:
                line.write()
            # Support sees why: the verdict goes with the refusal's tracking event.
            self._track_refusal(session, txn, "DATA", refusal, detail=decision.log_fields())
            metrics.refused("smtp", "data", refusal)
            hourly.add("refused")
            return refusal
        stored, old_head = step.stored_headers(
            content, decision, copies, sender=txn.sender, helo=session.host_name
        )
        if old_head:
            if body.spilled:
                await self._blocking(body.cut_head, old_head)
            else:
                body.cut_head(old_head)
        return Scanned(
            decision,
            stored[: len(hosted)],
            stored[len(hosted)] if relay_copy is not None else None,
        )

    def _count_scan(self, session: SmtpSession, txn: Transaction, decision: Decision) -> None:
        outcome = {
            Action.REJECT: "rejected",
            Action.VIRUS: "rejected",
            Action.TAG: "tagged",
            Action.UNSCANNED: "unscanned",
            Action.TEMPFAIL: "deferred",
        }.get(decision.action, "clean")
        score = decision.score
        # Tagged if any copy's own domain tags at this score.
        every = [*txn.scan_rules.values(), *txn.relay_rules.values()]
        if (
            outcome == "clean"
            and score is not None
            and any(not rules.allowed and score >= rules.policy.tag_score for rules in every)
        ):
            outcome = "tagged"
        metrics.scanner_verdict(*scanner_verdict(decision.action, outcome))
        if outcome != "rejected":
            self.stats.add_scan(outcome)
            return
        for target, rcpt in txn.targets.values():
            self._record_rejection(session, txn, target.ref.domain, rcpt, decision)
        for address, info in txn.relay:
            self._record_rejection(session, txn, info.name, address, decision)

    def _record_rejection(
        self,
        session: SmtpSession,
        txn: Transaction,
        domain: str,
        rcpt: str,
        decision: Decision | None,
    ) -> None:
        """One rejection row per recipient domain's view (the dashboard counts messages)."""
        record = RejectionRecord(
            domain=domain,
            queue_id=txn.queue_id,
            client_ip=_peer_ip(session),
            sender=txn.sender,
            recipient=rcpt,
            action=decision.action.value if decision is not None else "blocked",
            score=decision.score if decision is not None else None,
            symbols=",".join(decision.symbols) if decision is not None else "",
            reason=decision.reason if decision is not None else "block list",
            occurred_at=dt.datetime.now(dt.UTC),
        )
        self.stats.add_scan("rejected", record)
