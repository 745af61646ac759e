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

from dataclasses import dataclass

from app.maildir_stream import SpooledBody
from app.scanning import headers
from app.scanning.clients import ScanEnvelope
from app.scanning.decision import Action, Decision, ScanPolicy
from app.scanning.scanner import Scanner


def reply_for(decision: Decision, queue_id: str) -> str | None:
    """The refusal for ``decision``, or None when the message is to be stored."""
    if decision.action is Action.REJECT:
        return f"550 5.7.1 Message rejected as spam ({decision.reason}), queue id {queue_id}"
    if decision.action is Action.BLOCKED:
        return f"550 5.7.1 Message rejected by the recipient's policy, queue id {queue_id}"
    if decision.action is Action.VIRUS:
        return f"554 5.7.1 Message rejected: {decision.reason}, queue id {queue_id}"
    if decision.action is Action.TEMPFAIL:
        return f"451 4.7.1 Message not accepted now ({decision.reason}), try again later"
    return None


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
        policy: ScanPolicy,
        *,
        sender: str,
        helo: str | None,
    ) -> tuple[StoredHeaders, bytes]:
        """The headers for the stored copies and the old header section to cut (b"" when the
        section stays as it is)."""
        old = headers.split_head(content)
        head, removed = headers.strip_forged(old, self.authserv_id)
        added = headers.authentication_results(
            self.authserv_id,
            decision.result,
            sender=sender,
            helo=helo,
            from_domain=headers.from_domain(old),
        )
        if decision.action is Action.UNSCANNED:
            added += f"X-Mailhost-Scan: unscanned ({decision.reason})\n".encode()
        elif decision.score is not None:
            added += headers.spam_headers(
                score=decision.score,
                threshold=policy.tag_score,
                spam=decision.action is Action.TAG,
                symbols=list(decision.symbols),
            )
        tagged = decision.action is Action.TAG and bool(policy.subject_tag)
        if tagged:
            head = headers.tag_subject(head, policy.subject_tag)
        if not removed and not tagged:
            return StoredHeaders(added, None), b""
        return StoredHeaders(added, head), old


def cut(body: SpooledBody, old_head: bytes) -> None:
    """Blocking when spilled: run on a worker thread."""
    body.cut_head(old_head)
