"""Small asyncio clients for rspamd's HTTP protocol and clamd's INSTREAM (no I/O elsewhere).

Why no library: rspamd's protocol is one HTTP/1.0 POST with a JSON answer, clamd's INSTREAM a
length-prefixed stream with a one-line answer; a hand-written client of about 100 lines keeps
both on the serving event loop without a dependency (httpx is a test-only dependency here, and
aioclamd wraps the same dozen lines).
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass, field
from typing import Any

# clamd reads INSTREAM in chunks of at most StreamMaxLength; 64 KiB pieces keep memory flat.
_CLAMD_CHUNK = 64 * 1024
# An rspamd answer is a few KiB of JSON; more than this is not an rspamd answer.
_MAX_RSPAMD_REPLY = 4 * 1024 * 1024


class ScannerError(Exception):
    """A scanner could not be reached or gave an answer we cannot use (always temporary)."""


@dataclass(frozen=True, slots=True)
class ScanEnvelope:
    """What rspamd is told about the SMTP transaction (its protocol's request headers)."""

    client_ip: str
    helo: str | None
    sender: str  # "" is the null reverse-path
    recipients: tuple[str, ...]
    queue_id: str
    user: str | None = None  # the authenticated submitter (outbound scans)
    settings: dict[str, Any] | None = None  # rspamd's per-request "Settings" header


@dataclass(frozen=True, slots=True)
class RspamdResult:
    score: float
    action: str  # "no action", "greylist", "add header", "rewrite subject", "soft reject", ...
    symbols: dict[str, tuple[float, tuple[str, ...]]] = field(default_factory=dict)
    skipped: bool = False  # a pre-result (GTUBE, a forced action) decided without scoring
    message: str | None = None  # rspamd's smtp_message, if any

    def top_symbols(self, count: int = 5) -> list[str]:
        """The symbols that mattered most: largest absolute score first."""
        ranked = sorted(self.symbols.items(), key=lambda item: (-abs(item[1][0]), item[0]))
        scored = [name for name, (score, _) in ranked if score]
        return (scored or [name for name, _ in ranked])[:count]


def parse_address(address: str, default_port: int) -> tuple[str, int]:
    """``host:port`` or ``host`` (``[v6]:port`` too) as a (host, port) pair."""
    text = address.strip()
    if text.startswith("http://"):
        text = text[len("http://") :].rstrip("/")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    return host, int(port)


def _header_value(value: str) -> str:
    # No CR/LF may reach the request: the envelope comes from the network.
    return "".join(ch if 0x20 <= ord(ch) < 0x7F else "?" for ch in value)


class RspamdClient:
    """``POST /checkv2`` to one rspamd normal worker (or proxy)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def _request(self, content: bytes, envelope: ScanEnvelope) -> bytes:
        headers = [
            "POST /checkv2 HTTP/1.0",
            f"Host: {self.host}",
            f"Content-Length: {len(content)}",
            f"IP: {_header_value(envelope.client_ip)}",
            f"From: {_header_value(envelope.sender)}",
            f"Queue-Id: {_header_value(envelope.queue_id)}",
        ]
        if envelope.helo:
            headers.append(f"Helo: {_header_value(envelope.helo)}")
        headers += [f"Rcpt: {_header_value(rcpt)}" for rcpt in envelope.recipients]
        if envelope.user:
            headers.append(f"User: {_header_value(envelope.user)}")
        if envelope.settings:
            headers.append(f"Settings: {json.dumps(envelope.settings, separators=(',', ':'))}")
        return ("\r\n".join(headers) + "\r\n\r\n").encode("ascii") + content

    async def check(self, content: bytes, envelope: ScanEnvelope) -> RspamdResult:
        raw = await self._exchange(self._request(content, envelope))
        head, sep, body = raw.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0].split()
        if not sep or len(status) < 2 or status[1] != b"200":
            raise ScannerError(f"rspamd answered {head[:80]!r}")
        try:
            data = json.loads(body)
            symbols = {
                str(name): (
                    float(sym.get("score", 0.0)),
                    tuple(str(o) for o in sym.get("options", ())),
                )
                for name, sym in data.get("symbols", {}).items()
            }
            messages = data.get("messages") or {}
            return RspamdResult(
                score=float(data["score"]),
                action=str(data["action"]),
                symbols=symbols,
                skipped=bool(data.get("is_skipped", False)),
                message=str(messages["smtp_message"]) if "smtp_message" in messages else None,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ScannerError(f"rspamd answer not understood: {exc}") from exc

    async def ping(self) -> bool:
        try:
            raw = await self._exchange(b"GET /ping HTTP/1.0\r\n\r\n")
        except (ScannerError, OSError):
            return False
        return raw.startswith(b"HTTP/1.") and b" 200 " in raw.split(b"\r\n", 1)[0] + b" "

    async def _exchange(self, request: bytes) -> bytes:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise ScannerError(f"rspamd at {self.host}:{self.port}: {exc}") from exc
        try:
            writer.write(request)
            await writer.drain()
            raw = await reader.read(_MAX_RSPAMD_REPLY)
            while raw and len(raw) < _MAX_RSPAMD_REPLY:
                more = await reader.read(_MAX_RSPAMD_REPLY - len(raw))
                if not more:
                    break
                raw += more
            return raw
        except OSError as exc:
            raise ScannerError(f"rspamd at {self.host}:{self.port}: {exc}") from exc
        finally:
            writer.close()


class ClamdClient:
    """clamd over TCP: ``zINSTREAM`` (null-terminated commands, one answer line)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    async def _command(self, command: bytes, payload: bytes | None = None) -> str:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise ScannerError(f"clamd at {self.host}:{self.port}: {exc}") from exc
        try:
            # One write per chunk, the command and the terminator joined to the first and the
            # last: each write on an idle transport is its own send(2), and a typical message
            # is one chunk, so it goes in one segment (was four sends per message).
            frame: list[bytes | memoryview] = [b"z" + command + b"\0"]
            if payload is not None:
                view = memoryview(payload)
                for start in range(0, len(view), _CLAMD_CHUNK):
                    piece = view[start : start + _CLAMD_CHUNK]
                    frame += [struct.pack("!L", len(piece)), piece]
                    if start + _CLAMD_CHUNK < len(view):
                        writer.write(b"".join(frame))
                        frame = []
                        await writer.drain()
                frame.append(struct.pack("!L", 0))
            writer.write(b"".join(frame))
            await writer.drain()
            answer = await reader.readuntil(b"\0")
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise ScannerError(f"clamd at {self.host}:{self.port}: {exc}") from exc
        finally:
            writer.close()
        return answer.rstrip(b"\0").decode("utf-8", "replace")

    async def scan(self, content: bytes) -> str | None:
        """The name of the virus found, or None for a clean message."""
        answer = await self._command(b"INSTREAM", content)
        # "stream: OK", "stream: Eicar-Signature FOUND", "INSTREAM size limit exceeded. ERROR"
        if answer.endswith(" FOUND"):
            return answer.removeprefix("stream: ").removesuffix(" FOUND").strip() or "unknown"
        if answer.endswith(": OK"):
            return None
        raise ScannerError(f"clamd answered {answer[:80]!r}")

    async def ping(self) -> bool:
        try:
            return await self._command(b"PING") == "PONG"
        except ScannerError:
            return False
