"""Liveness and readiness checks every service answers with: what is wrong, by name.

Liveness (``/livez``) says the process answers; it checks nothing else, so an orchestrator
never restarts a worker because the database is down (a restart would not fix it). Readiness
(``/readyz``) says whether it can do its work now: the database answers a query, the Maildir
volume takes a written and fsync'd file, and each configured content scanner answers. Each
check has a name, ``ok`` and, when not ok, a one-line ``error`` a person can act on.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.scanning.clients import ClamdClient, RspamdClient
from app.scanning.scanner import Scanner


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Report:
    checks: tuple[Check, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_json(self) -> dict[str, object]:
        return {
            "status": "ok" if self.ok else "error",
            "checks": {
                c.name: {"ok": c.ok, **({"error": c.error} if c.error else {})} for c in self.checks
            },
        }


def check_database(factory: sessionmaker[Session]) -> Check:
    try:
        with factory() as session:
            session.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        cause = getattr(exc, "orig", None) or exc
        reason = (str(cause).splitlines() or [type(cause).__name__])[0]
        return Check("database", False, f"unreachable: {reason[:200]}")
    return Check("database", True)


def check_writable(name: str, root: Path) -> Check:
    """Write, fsync and remove a probe file in ``root`` (a full or read-only volume fails)."""
    probe = root / f".mailhost-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        if not root.is_dir():
            return Check(name, False, f"{root} does not exist or is not a directory")
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"probe\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return Check(name, False, f"{root} is not writable: {exc.strerror or exc}")
    return Check(name, True)


# A scanner check: a callable answering a Check (``scanner_checks`` makes them).
ScannerCheck = Callable[[], Check]
# A scanner that has not answered its PING within this long is not ready.
SCANNER_PING_SECONDS = 5.0


def _ping_check(name: str, client: RspamdClient | ClamdClient, timeout: float) -> ScannerCheck:
    async def ping() -> bool:
        try:
            async with asyncio.timeout(timeout):
                return await client.ping()
        except TimeoutError:
            return False

    def check() -> Check:
        # Called from a thread of its own (the listener's, or the portal's threadpool).
        if asyncio.run(ping()):
            return Check(name, True)
        return Check(name, False, f"{client.host}:{client.port} does not answer its PING")

    return check


def scanner_checks(settings: Settings) -> list[ScannerCheck]:
    """One readiness check per configured content scanner (none with scanning off)."""
    scanner = Scanner.from_settings(settings)
    if scanner is None:
        return []
    timeout = min(scanner.timeout, SCANNER_PING_SECONDS)
    return [
        _ping_check(name, client, timeout)
        for name, client in (("rspamd", scanner.rspamd), ("clamd", scanner.clamd))
        if client is not None
    ]


def readiness(
    *,
    session_factory: sessionmaker[Session],
    maildir_root: Path,
    scanners: Sequence[ScannerCheck] = (),
) -> Report:
    checks = [check_database(session_factory), check_writable("maildir", maildir_root)]
    checks += [scanner() for scanner in scanners]
    return Report(tuple(checks))
