"""The scan after the final dot, with the real rspamd and clamd (tests/scanners.py): GTUBE,
EICAR, clean mail with Authentication-Results, forged results, scanner failures, tagging,
DKIM verified by rspamd against keys on the test DNS server."""

from __future__ import annotations

import base64
import smtplib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app import dkim, metrics
from app.maildir import MaildirStore
from app.services import tracking
from tests.dnsserver import TestDNSServer
from tests.protocol.smtp_helpers import ADDRESSES, IngressThread, all_message_files, new_messages
from tests.scanners import EICAR, EICAR_SIGNATURE, GTUBE

USER = ADDRESSES["user"]
SENDER = "alice@sender.example"
AUTHSERV = "mx.mailhost.test"


@pytest.fixture(scope="module", autouse=True)
def sender_domain(scan_dns: TestDNSServer) -> None:
    """sender.example publishes SPF allowing 127.0.0.1 (where the tests send from). Once per
    DNS server: the modules that import this fixture run it again, and a second DMARC record
    would make every DMARC result a permerror (RFC 7489 section 6.6.3)."""
    if getattr(scan_dns, "sender_example_published", False):
        return
    scan_dns.sender_example_published = True  # type: ignore[attr-defined]
    scan_dns.zone.txt("sender.example", "v=spf1 ip4:127.0.0.1 -all")
    scan_dns.zone.txt("_dmarc.sender.example", "v=DMARC1; p=reject")
    scan_dns.zone.a("client.sender.example", "127.0.0.1")


def message(body: str = "Hello, this is an ordinary message.\r\n", *, extra: str = "") -> bytes:
    return (
        f"From: Alice <{SENDER}>\r\nTo: <{USER}>\r\nSubject: Lunch\r\n"
        "Date: Thu, 03 Dec 2026 12:00:00 +0000\r\nMessage-ID: <lunch-1@sender.example>\r\n"
        f"{extra}\r\n{body}"
    ).encode()


def send(ingress: IngressThread, data: bytes, sender: str = SENDER) -> tuple[int, str]:
    """The reply to the final dot: (code, text)."""
    with smtplib.SMTP(
        "127.0.0.1", ingress.port, local_hostname="client.sender.example", timeout=30
    ) as client:
        client.ehlo()
        client.mail(sender)
        code, _ = client.rcpt(USER)
        assert code == 250
        code, text = client.data(data)
        return code, text.decode()


def stored(store: MaildirStore) -> list[bytes]:
    return new_messages(store, USER)


def verdicts(scanner: str, verdict: str) -> float:
    """The MX's ``mailhost_scanner_verdicts`` count for these labels (this process)."""
    for family in metrics.instruments().scanner_verdicts.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels == {
                "scanner": scanner,
                "verdict": verdict,
            }:
                return sample.value
    return 0.0


def head_of(data: bytes) -> str:
    return data.split(b"\n\n", 1)[0].decode()


def test_gtube_is_rejected_550_with_queue_id_and_not_stored(
    scan_ingress: IngressThread, store: MaildirStore
) -> None:
    before = verdicts("rspamd", "spam")
    code, text = send(scan_ingress, message(GTUBE.decode() + "\r\n"))
    assert code == 550 and text.startswith("5.7.1 Message rejected as spam"), text
    assert verdicts("rspamd", "spam") == before + 1
    assert "Gtube pattern" in text and "queue id " in text
    assert stored(store) == []
    # Nothing left in any tmp/ either (the body was never spilled or was discarded).
    assert not [p for p in all_message_files(store.root) if p.parent.name == "tmp"]


def test_eicar_attachment_is_rejected_554_and_not_stored(
    scan_ingress: IngressThread, store: MaildirStore
) -> None:
    attachment = base64.encodebytes(EICAR).decode().replace("\n", "\r\n")
    body = (
        "--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        "--b1\r\nContent-Type: application/octet-stream\r\n"
        'Content-Disposition: attachment; filename="eicar.com"\r\n'
        f"Content-Transfer-Encoding: base64\r\n\r\n{attachment}--b1--\r\n"
    )
    data = message(
        body, extra='MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n'
    )
    before = verdicts("clamd", "virus")
    code, text = send(scan_ingress, data)
    assert code == 554 and text.startswith("5.7.1 Message rejected: virus"), text
    assert verdicts("clamd", "virus") == before + 1
    assert EICAR_SIGNATURE in text
    assert stored(store) == []


def test_clean_message_is_stored_with_authentication_results(
    scan_ingress: IngressThread, store: MaildirStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="smtp_ingress"):
        code, text = send(scan_ingress, message())
    assert code == 250, text
    [copy] = stored(store)
    head = head_of(copy)
    assert f"Authentication-Results: {AUTHSERV};" in head
    assert f"spf=pass smtp.mailfrom={SENDER}" in head
    assert "dkim=none" in head
    assert "X-Spam-Status: No, score=" in head
    assert "Subject: Lunch\n" in head
    assert copy.endswith(b"Hello, this is an ordinary message.\n")
    line = next(r.getMessage() for r in caplog.records if "result=250" in r.getMessage())
    assert "scan=clean score=" in line


def test_forged_authentication_results_with_our_id_are_removed(
    scan_ingress: IngressThread, store: MaildirStore
) -> None:
    forged = (
        f"Authentication-Results: {AUTHSERV.upper()};\r\n"
        "\tspf=pass smtp.mailfrom=ceo@bank.example\r\n"
        "Authentication-Results: other.example; dkim=pass header.d=sender.example\r\n"
    )
    code, _ = send(scan_ingress, message(extra=forged))
    assert code == 250
    [copy] = stored(store)
    head = head_of(copy)
    assert "ceo@bank.example" not in head
    assert head.count(f"Authentication-Results: {AUTHSERV};") == 1  # ours only
    assert "Authentication-Results: other.example; dkim=pass" in head  # not ours: kept
    assert copy.endswith(b"Hello, this is an ordinary message.\n")


def test_over_the_tag_threshold_the_copy_is_tagged(
    scan_start: Callable[..., IngressThread], store: MaildirStore
) -> None:
    ingress = scan_start(scan_tag_score=-50.0, scan_subject_tag="[SPAM?]")
    code, _ = send(ingress, message())
    assert code == 250
    [copy] = stored(store)
    head = head_of(copy)
    assert "X-Spam-Status: Yes, score=" in head and "required=-50.0" in head
    assert "X-Spam-Score: " in head
    assert "Subject: [SPAM?] Lunch\n" in head
    assert head.count("Subject:") == 1


def test_over_the_reject_threshold_550(
    scan_start: Callable[..., IngressThread], store: MaildirStore
) -> None:
    ingress = scan_start(scan_reject_score=-50.0)
    code, text = send(ingress, message())
    assert code == 550 and "spam score" in text
    assert stored(store) == []


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung scanner)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join(5)
    listener.close()
    for conn in held:
        conn.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_scanner_down_gives_451_and_nothing_stored(
    scan_start: Callable[..., IngressThread], store: MaildirStore
) -> None:
    ingress = scan_start(scan_rspamd_address=f"127.0.0.1:{closed_port()}")
    code, text = send(ingress, message())
    assert code == 451 and text.startswith("4.7.1 "), text
    assert "scanner unavailable" in text
    assert stored(store) == []


def test_scanner_slow_gives_451_after_the_deadline(
    scan_start: Callable[..., IngressThread], store: MaildirStore, silent_port: int
) -> None:
    ingress = scan_start(scan_clamd_address=f"127.0.0.1:{silent_port}", scan_timeout=0.5)
    code, text = send(ingress, message())
    assert code == 451 and "timed out" in text, text
    assert stored(store) == []


def test_accept_unscanned_stores_the_message_tagged(
    scan_start: Callable[..., IngressThread], store: MaildirStore
) -> None:
    ingress = scan_start(
        scan_rspamd_address=f"127.0.0.1:{closed_port()}", scan_accept_unscanned=True
    )
    code, _ = send(ingress, message())
    assert code == 250
    [copy] = stored(store)
    head = head_of(copy)
    assert "X-Mailhost-Scan: unscanned (scanner unavailable)" in head
    assert f"Authentication-Results: {AUTHSERV}; none" in head


def test_large_spilled_message_is_scanned_and_tagged(
    scan_start: Callable[..., IngressThread], store: MaildirStore
) -> None:
    """Past 256 KiB the body is spilled to disk: the subject tag still rewrites its head."""
    ingress = scan_start(scan_tag_score=-50.0)
    body = "All work and no play makes Jack a dull boy.\r\n" * 10_000
    code, _ = send(ingress, message(body))
    assert code == 250
    [copy] = stored(store)
    assert "Subject: [SPAM] Lunch\n" in head_of(copy)
    assert copy.endswith(b"dull boy.\n") and copy.count(b"dull boy") == 10_000


@pytest.fixture(scope="module")
def dkim_key(scan_dns: TestDNSServer) -> dkim.SigningKey:
    generated = dkim.generate_key("rsa")
    scan_dns.zone.txt(
        "test1._domainkey.sender.example",
        dkim.record_value(generated.algorithm, generated.public_key),
    )
    return dkim.SigningKey(
        domain="sender.example",
        selector="test1",
        algorithm=generated.algorithm,
        private_key_pem=generated.private_key_pem,
    )


def test_dkim_signed_message_verifies_as_pass(
    scan_ingress: IngressThread, store: MaildirStore, dkim_key: dkim.SigningKey
) -> None:
    code, _ = send(scan_ingress, dkim.sign_message(message(), dkim_key))
    assert code == 250
    head = head_of(stored(store)[0])
    assert "dkim=pass header.d=sender.example" in head
    assert "dmarc=pass header.from=sender.example" in head


def test_tampered_dkim_signed_message_verifies_as_fail(
    scan_ingress: IngressThread, store: MaildirStore, dkim_key: dkim.SigningKey
) -> None:
    signed = dkim.sign_message(message(), dkim_key)
    tampered = signed.replace(b"ordinary message", b"ordinary messagE")
    code, _ = send(scan_ingress, tampered)
    assert code == 250
    head = head_of(stored(store)[0])
    assert "dkim=fail header.d=sender.example" in head


def test_scan_verdicts_are_in_the_tracking_events_support_searches(
    scan_start: Callable[..., IngressThread], session_factory: sessionmaker[Session]
) -> None:
    """Why was this refused?  the GTUBE refusal's event carries the verdict and its
    symbols; a clean message's stored event carries its verdict too."""
    server = scan_start()
    code, _ = send(server, message(GTUBE.decode() + "\r\n"))
    assert code == 550
    code, _ = send(server, message())
    assert code == 250
    server.stop()  # writes the buffered events
    with session_factory() as session:
        events = list(
            tracking.search(session, query=tracking.normalise_query(address=SENDER), limit=50)
        )
    refused = [e for e in events if e.kind == "refused"]
    assert [(e.stage, (e.reply or "")[:3]) for e in refused] == [("DATA", "550")]
    assert "scan=rejected" in (refused[0].detail or "")
    assert "GTUBE" in (refused[0].detail or "")
    stored_events = [e for e in events if e.kind == "stored"]
    assert stored_events and all("scan=clean" in (e.detail or "") for e in stored_events)
