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


@dataclass(frozen=True, slots=True)
class CopyRules:
    """The policy of one stored copy's domain, and whether the sender is on its allow list."""

    policy: ScanPolicy
    allowed: bool = False


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
