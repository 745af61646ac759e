"""The scan of one message: rspamd and clamd at once, under one deadline, into a Decision."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from app.config import Settings
from app.scanning.clients import (
    ClamdClient,
    RspamdClient,
    RspamdResult,
    ScanEnvelope,
    ScannerError,
    parse_address,
)
from app.scanning.decision import Action, Decision, ScanPolicy, decide

log = logging.getLogger("app.scanning")

# rspamd's greylist module registers these; disabling them per request turns greylisting off
# for a domain whose policy says so (rspamd's "Settings" request header, symbols_disabled).
GREYLIST_SYMBOLS = ("GREYLIST_CHECK", "GREYLIST_SAVE")


@dataclass(frozen=True, slots=True)
class ScannerState:
    """For the health endpoint: configured and answering, per scanner."""

    rspamd: str  # "off", "up", "down"
    clamd: str

    @property
    def ok(self) -> bool:
        return "down" not in (self.rspamd, self.clamd)


class Scanner:
    """Built from Settings; ``None`` from ``Scanner.from_settings`` when scanning is off."""

    def __init__(
        self,
        *,
        rspamd: RspamdClient | None,
        clamd: ClamdClient | None,
        timeout: float,
        accept_unscanned: bool,
        max_size: int,
    ) -> None:
        self.rspamd = rspamd
        self.clamd = clamd
        self.timeout = timeout
        self.accept_unscanned = accept_unscanned
        self.max_size = max_size

    @classmethod
    def from_settings(cls, settings: Settings) -> Scanner | None:
        if not settings.scan_rspamd_address and not settings.scan_clamd_address:
            return None
        rspamd = clamd = None
        if settings.scan_rspamd_address:
            rspamd = RspamdClient(*parse_address(settings.scan_rspamd_address, 11333))
        if settings.scan_clamd_address:
            clamd = ClamdClient(*parse_address(settings.scan_clamd_address, 3310))
        return cls(
            rspamd=rspamd,
            clamd=clamd,
            timeout=settings.scan_timeout,
            accept_unscanned=settings.scan_accept_unscanned,
            max_size=settings.scan_max_size,
        )

    async def scan(
        self,
        content: bytes,
        envelope: ScanEnvelope,
        policy: ScanPolicy,
        *,
        spam_check: bool = True,
    ) -> Decision:
        """Scan ``content`` (the whole message, LF line endings). ``spam_check=False`` (the
        sender is on an allow list) asks clamd only: an allow-listed sender still carries
        no virus in."""
        if len(content) > self.max_size:
            log.info(
                "qid=%s not scanned: %d octets over scan_max_size", envelope.queue_id, len(content)
            )
            return Decision(Action.UNSCANNED, reason="too large to scan")
        if not policy.greylisting:
            envelope = _without_greylisting(envelope)
        try:
            async with asyncio.timeout(self.timeout):
                result, virus = await self._both(content, envelope, spam_check)
        except (ScannerError, TimeoutError) as exc:
            reason = "scanner timed out" if isinstance(exc, TimeoutError) else "scanner unavailable"
            log.warning("qid=%s scan failed: %s", envelope.queue_id, exc or reason)
            if self.accept_unscanned:
                return Decision(Action.UNSCANNED, reason=reason)
            return Decision(Action.TEMPFAIL, reason=reason)
        decision = decide(result, virus, policy)
        if not spam_check and decision.action is Action.ACCEPT:
            return Decision(Action.ALLOWED, reason="allow list")
        return decision

    async def _both(
        self, content: bytes, envelope: ScanEnvelope, spam_check: bool
    ) -> tuple[RspamdResult | None, str | None]:
        """Both scanners at once; the first failure cancels the other (a TaskGroup, not
        gather, which would leave it running)."""
        try:
            async with asyncio.TaskGroup() as group:
                spam = group.create_task(self._rspamd(content, envelope, spam_check))
                virus = group.create_task(self._clamd(content))
        except* ScannerError as failed:
            raise failed.exceptions[0] from None
        return spam.result(), virus.result()

    async def _rspamd(
        self, content: bytes, envelope: ScanEnvelope, spam_check: bool
    ) -> RspamdResult | None:
        if self.rspamd is None or not spam_check:
            return None
        return await self.rspamd.check(content, envelope)

    async def _clamd(self, content: bytes) -> str | None:
        if self.clamd is None:
            return None
        return await self.clamd.scan(content)

    async def state(self) -> ScannerState:
        async def one(client: RspamdClient | ClamdClient | None) -> str:
            if client is None:
                return "off"
            try:
                async with asyncio.timeout(min(self.timeout, 5.0)):
                    return "up" if await client.ping() else "down"
            except TimeoutError:
                return "down"

        rspamd, clamd = await asyncio.gather(one(self.rspamd), one(self.clamd))
        return ScannerState(rspamd=rspamd, clamd=clamd)


def _without_greylisting(envelope: ScanEnvelope) -> ScanEnvelope:
    settings = dict(envelope.settings or {})
    disabled = list(settings.get("symbols_disabled", []))
    settings["symbols_disabled"] = [*disabled, *GREYLIST_SYMBOLS]
    return ScanEnvelope(
        client_ip=envelope.client_ip,
        helo=envelope.helo,
        sender=envelope.sender,
        recipients=envelope.recipients,
        queue_id=envelope.queue_id,
        user=envelope.user,
        settings=settings,
    )
