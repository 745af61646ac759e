"""STARTTLS byte boundaries over a raw socket (RFC 3207): plaintext pipelined after STARTTLS
is discarded (section 6, the command-injection defence), and what the client sends inside
TLS in the same segment as its handshake's last flight is kept and answered."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable

from app.config import Settings
from tests.protocol.smtp_helpers import IngressThread, RawClient


def _client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _TlsOverBio:
    """A TLS client over memory BIOs, so the test decides which bytes go in which segment."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = _client_context().wrap_bio(self.incoming, self.outgoing)
        self.plain = b""

    def handshake_without_final_flight(self) -> None:
        """Run the handshake; the client's last flight stays in ``outgoing``, unsent."""
        while True:
            try:
                self.tls.do_handshake()
                return
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                data = self.sock.recv(65536)
                assert data, "server closed during the handshake"
                self.incoming.write(data)

    def reply(self) -> str:
        """One whole SMTP reply read through TLS."""
        while True:
            lines = self.plain.split(b"\r\n")
            for i, line in enumerate(lines[:-1]):
                if line[3:4] != b"-":
                    self.plain = b"\r\n".join(lines[i + 1 :])
                    return b"\n".join(lines[: i + 1]).decode()
            try:
                self.plain += self.tls.read(65536)
            except ssl.SSLWantReadError:
                data = self.sock.recv(65536)
                assert data, "server closed the connection"
                self.incoming.write(data)

    def cmd(self, line: str) -> str:
        self.tls.write(line.encode() + b"\r\n")
        self.sock.sendall(self.outgoing.read())
        return self.reply()


def test_smtp_starttls_keeps_data_sent_with_the_handshake_and_drops_injected_plaintext(
    smtp_world: None, smtp_start: Callable[..., IngressThread], tls_settings: Settings
) -> None:
    server = smtp_start(tls_settings)
    client = RawClient(server.port)
    client.sock.settimeout(5)
    assert "STARTTLS" in client.cmd("EHLO client.example")
    # RFC 3207 section 6: a command pipelined in plaintext after STARTTLS (here a MAIL that a
    # man in the middle could have injected) must not be executed inside the TLS session.
    client.send(b"STARTTLS\r\nMAIL FROM:<injected@remote.example>\r\n")
    assert client.reply().startswith("220 2.0.0")
    tls = _TlsOverBio(client.sock)
    tls.handshake_without_final_flight()
    # In TLS 1.3 the client's Finished is the handshake's last flight (RFC 8446 section 2).
    assert tls.tls.version() == "TLSv1.3"
    assert tls.outgoing.pending, "the client's Finished must still be unsent"
    # The client's last handshake flight and its first command in one segment.
    tls.tls.write(b"EHLO client.example\r\n")
    client.sock.sendall(tls.outgoing.read())
    ehlo = tls.reply()
    assert ehlo.startswith("250-"), ehlo
    assert "STARTTLS" not in ehlo
    # Had the injected MAIL run, this would be "503 nested MAIL".
    assert tls.cmd("MAIL FROM:<a@remote.example>").startswith("250 2.1.0")
    assert tls.cmd("RCPT TO:<user@hosted.example>").startswith("250 2.1.5")
    assert tls.cmd("QUIT").startswith("221 2.0.0")
    client.close()
