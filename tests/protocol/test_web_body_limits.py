"""Oversized request bodies against ``mailhost serve`` as a real process: the answer, and the
process's peak memory (VmHWM) staying far below the body size, declared and chunked."""

from __future__ import annotations

import json
import re
import select
import socket
import sys
from pathlib import Path

import pytest

from tests.protocol.test_serve import Served, Server

BODY_BYTES = 200 * 1024 * 1024
CHUNK = b"x" * (256 * 1024)
# Peak growth allowed while a 200 MB body is refused: the limits and buffers are kilobytes,
# so anything near the body size means the body was read into memory.
MAX_GROWTH_BYTES = 40 * 1024 * 1024

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads VmHWM from /proc"
)


def peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.M)
    assert match, status
    return int(match.group(1)) * 1024


def send_big(port: int, head: bytes, *, chunked: bool) -> tuple[int, dict[str, str], bytes]:
    """Stream a 200 MB body after ``head``, reading the answer while sending (the server may
    answer early and close); the status, headers and body of the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    received = b""
    sent = 0
    try:
        sock.sendall(head)
        sending = True
        while True:
            readable, writable, _ = select.select([sock], [sock] if sending else [], [], 30)
            if not readable and not writable:
                raise AssertionError("no answer within 30 s")
            if readable:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
                sending = False  # the server has answered: the rest would go unread
                if _complete(received):
                    break
            if writable and sending:
                piece = CHUNK
                if chunked:
                    piece = f"{len(CHUNK):x}\r\n".encode() + CHUNK + b"\r\n"
                try:
                    sock.send(piece)
                except (BrokenPipeError, ConnectionResetError):
                    sending = False
                    continue
                sent += len(CHUNK)
                if sent >= BODY_BYTES:
                    if chunked:
                        sock.sendall(b"0\r\n\r\n")
                    sending = False
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    head_text, _, body = received.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    assert lines and lines[0].startswith("HTTP/1.1 "), received[:200]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, body


def _complete(received: bytes) -> bool:
    head, sep, body = received.partition(b"\r\n\r\n")
    if not sep:
        return False
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return match is not None and len(body) >= int(match.group(1))


def request_head(
    port: int,
    path: str,
    *,
    chunked: bool,
    token: str | None = None,
    content_type: str = "application/json",
) -> bytes:
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {BODY_BYTES}"
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: {content_type}\r\n{auth}{framing}\r\n\r\n"
    ).encode()


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Server, Served]:
    monkeypatch.chdir(tmp_path)
    server = Server(tmp_path, f"sqlite:///{tmp_path / 'var' / 'mailhost.db'}")
    try:
        yield server, server.start(1)  # type: ignore[misc]
    finally:
        server.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_a_200_mb_body_is_refused_without_being_read(
    served: tuple[Server, Served], chunked: bool
) -> None:
    server, proc = served
    token = json.loads(server.cli("token", "add", "big", "--scope", "provisioning", "--json"))[
        "token"
    ]
    before = peak_rss(proc.proc.pid)

    # Anonymous: 401 before the body is read (authentication comes first).
    status, headers, body = send_big(
        proc.web_port, request_head(proc.web_port, "/api/v1/customers", chunked=chunked),
        chunked=chunked,
    )  # fmt: skip
    assert status == 401, body[:300]
    assert headers["content-type"].startswith("application/problem+json")
    assert headers["www-authenticate"].startswith("Bearer")

    # Authenticated: 413 with a problem document.
    status, headers, body = send_big(
        proc.web_port,
        request_head(proc.web_port, "/api/v1/customers", chunked=chunked, token=token),
        chunked=chunked,
    )
    assert status == 413, body[:300]
    assert headers["content-type"].startswith("application/problem+json")
    assert json.loads(body[: int(headers["content-length"])])["status"] == 413

    # The portal (no authentication before forms): 413 as an HTML page.
    form = "application/x-www-form-urlencoded"
    status, headers, body = send_big(
        proc.web_port,
        request_head(proc.web_port, "/login", chunked=chunked, content_type=form),
        chunked=chunked,
    )
    assert status == 413, body[:300]
    assert headers["content-type"].startswith("text/html")

    growth = peak_rss(proc.proc.pid) - before
    assert growth < MAX_GROWTH_BYTES, f"peak memory grew by {growth / 2**20:.0f} MiB"
    assert proc.proc.poll() is None
    assert proc.terminate() == 0, proc.err()
