"""Verdicts: a scan result and a domain's policy in, one ``Decision`` out (no I/O)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from app.scanning.clients import RspamdResult

_REASON_MAX = 60


class Action(enum.Enum):
    ACCEPT = "clean"  # stored as it is (with Authentication-Results)
    TAG = "tagged"  # stored with X-Spam-Status: Yes and the subject tag
    REJECT = "rejected"  # spam: 550 5.7.1
    VIRUS = "virus"  # always refused: 554 5.7.1
    TEMPFAIL = "tempfail"  # scanner down/slow, or rspamd said soft reject / greylist: 451 4.7.1
    UNSCANNED = "unscanned"  # scanner down, accepted by the operator's setting (tagged)
    ALLOWED = "allowed"  # allow list: not scanned for spam (still for viruses)


@dataclass(frozen=True, slots=True)
class ScanPolicy:
    """What a recipient domain wants (platform defaults, overridden per customer and domain)."""

    reject_score: float = 15.0
    tag_score: float = 6.0
    subject_tag: str = "[SPAM]"
    greylisting: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    score: float | None = None
    symbols: tuple[str, ...] = ()
    reason: str = ""  # short, safe for an SMTP reply
    virus: str | None = None
    result: RspamdResult | None = field(default=None, compare=False)

    def log_fields(self) -> str:
        """The scan part of the transaction log line."""
        score = "-" if self.score is None else f"{self.score:.1f}"
        text = f"scan={self.action.value} score={score}"
        if self.symbols:
            text += " symbols=" + ",".join(self.symbols)
        if self.virus:
            text += f" virus={self.virus}"
        if self.reason and self.action is not Action.ACCEPT:
            text += f' reason="{self.reason}"'
        return text


def safe_reason(text: str) -> str:
    """Printable ASCII, short: it goes into an SMTP reply and a log line."""
    cleaned = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch != '"' else " " for ch in text)
    return " ".join(cleaned.split())[:_REASON_MAX]


def decide(result: RspamdResult | None, virus: str | None, policy: ScanPolicy) -> Decision:
    """The verdict. A virus always wins; then rspamd's pre-results (GTUBE and forced actions
    decide without scoring, ``is_skipped``) and its temporary actions (greylisting, rate
    limits); otherwise the score against the domain's own thresholds, not rspamd's."""
    if virus is not None:
        return Decision(Action.VIRUS, virus=safe_reason(virus), reason=f"virus {virus}")
    if result is None:
        return Decision(Action.ACCEPT)
    symbols = tuple(result.top_symbols())

    def made(action: Action, reason: str = "") -> Decision:
        return Decision(action, result.score, symbols, reason, result=result)

    if result.action == "soft reject":
        # rspamd's greylist module (and ratelimit) answer "soft reject" until the triplet is
        # old enough. rspamd's score-based "greylist" action is ignored like its other score
        # actions: the domain's thresholds decide.
        return made(Action.TEMPFAIL, safe_reason(result.message or "greylisted"))
    if result.skipped and result.action == "reject":
        return made(Action.REJECT, safe_reason(result.message or "rejected by policy"))
    if result.score >= policy.reject_score:
        return made(Action.REJECT, f"spam score {result.score:.1f}")
    if result.score >= policy.tag_score:
        return made(Action.TAG, f"spam score {result.score:.1f}")
    return made(Action.ACCEPT)
