"""clamd asked directly (what the MX does) against rspamd's antivirus module pointed at the same
clamd: latency per message and the scanners' CPU per message, in the same run, alternating.

Starts a private clamd and two private rspamd instances (tests/scanners.py): one as the MX uses
it (no antivirus module), one with ``local.d/antivirus.conf`` asking that clamd. Route
"direct" is Mailhost's own ``Scanner``: rspamd and clamd INSTREAM at once, one deadline;
route "module" is one rspamd request whose antivirus module streams the attachments to
clamd. One message at a time (latency, not throughput), a clean message with an attachment
of ``--size`` octets; first checks that both routes catch EICAR.

Usage: .venv/bin/python bench/scan_antivirus.py [--messages 100] [--rounds 3] [--size 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.scanning.clients import ClamdClient, RspamdClient, ScanEnvelope  # noqa: E402
from app.scanning.decision import Action, ScanPolicy  # noqa: E402
from app.scanning.scanner import Scanner  # noqa: E402
from bench.scan_ingest import tree  # noqa: E402
from bench.smtp_ingest import cpu_seconds  # noqa: E402
from tests.dnsserver import TestDNSServer  # noqa: E402
from tests.scanners import EICAR, Clamd, Rspamd, cache_dir  # noqa: E402

ENVELOPE = ScanEnvelope(
    client_ip="127.0.0.1",
    helo="client.remote.example",
    sender="bench@remote.example",
    recipients=("someone@bench.example",),
    queue_id="BENCH",
)
POLICY = ScanPolicy(reject_score=1000.0, tag_score=999.0)


def with_attachment(payload: bytes) -> bytes:
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return (
        b"From: bench@remote.example\r\nTo: someone@bench.example\r\nSubject: bench\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--b1\r\nContent-Type: application/octet-stream\r\n"
        b'Content-Disposition: attachment; filename="data.bin"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"--b1--\r\n"
    ).replace(b"\r\n", b"\n")


async def run(scanner: Scanner, content: bytes, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        decision = await scanner.scan(content, ENVELOPE, POLICY)
        latencies.append(time.perf_counter() - started)
        if decision.action not in (Action.ACCEPT, Action.TAG):
            raise SystemExit(f"clean message not accepted: {decision}")
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="av-bench-") as tmp:
        root = Path(tmp)
        dns = TestDNSServer().start()
        clamd = Clamd(root / "clamd")
        antivirus = (
            f'clamav {{ type = "clamav"; servers = "{clamd.address}"; symbol = "CLAM_VIRUS";\n'
            '  action = "reject"; scan_mime_parts = true; timeout = 10.0; }\n'
        )
        plain = Rspamd(root / "plain", dns_port=dns.port, cache_dir=cache_dir())
        module = Rspamd(
            root / "module",
            dns_port=dns.port,
            cache_dir=cache_dir(),
            local_d={"antivirus.conf": antivirus},
        )
        kw = {"timeout": 30.0, "accept_unscanned": False, "max_size": 50 << 20}
        routes = {
            "direct": (
                Scanner(
                    rspamd=RspamdClient("127.0.0.1", plain.port),
                    clamd=ClamdClient("127.0.0.1", clamd.port),
                    **kw,  # type: ignore[arg-type]
                ),
                plain,
            ),
            "module": (
                Scanner(rspamd=RspamdClient("127.0.0.1", module.port), clamd=None, **kw),  # type: ignore[arg-type]
                module,
            ),
        }
        clean = with_attachment(bytes(range(256)) * (args.size // 256 + 1))
        virus = with_attachment(EICAR)
        results: dict[str, list[tuple[float, float, float, float]]] = {r: [] for r in routes}
        try:
            for name, (scanner, _) in routes.items():
                caught = asyncio.run(scanner.scan(virus, ENVELOPE, POLICY))
                # The module's verdict is a pre-result "reject" with clamav's message (not
                # is_skipped): Mailhost's decide() does not take it, so read rspamd's answer.
                said = caught.result.action if caught.result is not None else "-"
                print(f"  {name}: EICAR -> {caught.action.value}, rspamd action {said!r}")
                if caught.action is not Action.VIRUS and said != "reject":
                    raise SystemExit(f"route {name} let EICAR through")
                asyncio.run(run(scanner, clean, 5))  # warm up
            for _ in range(args.rounds):
                for name, (scanner, rspamd) in routes.items():
                    pids = tree(rspamd.process.pid)
                    rspamd_before, clamd_before = (
                        cpu_seconds(pids),
                        cpu_seconds([clamd.process.pid]),
                    )
                    latencies = asyncio.run(run(scanner, clean, args.messages))
                    rspamd_ms = (cpu_seconds(pids) - rspamd_before) * 1000 / args.messages
                    clamd_ms = (
                        (cpu_seconds([clamd.process.pid]) - clamd_before) * 1000 / args.messages
                    )
                    latencies.sort()
                    results[name].append(
                        (
                            statistics.median(latencies) * 1000,
                            latencies[int(len(latencies) * 0.95) - 1] * 1000,
                            rspamd_ms,
                            clamd_ms,
                        )
                    )
        finally:
            plain.stop()
            module.stop()
            clamd.stop()
            dns.stop()
    print(
        f"attachment={args.size} octets, messages/round={args.messages}, rounds={args.rounds}, "
        "one at a time (medians of the rounds)"
    )
    med = {r: [statistics.median(x[i] for x in results[r]) for i in range(4)] for r in results}
    for name in routes:
        p50, p95, rspamd_ms, clamd_ms = med[name]
        print(
            f"  {name:6}: latency p50 {p50:7.2f} ms  p95 {p95:7.2f} ms  "
            f"rspamd CPU {rspamd_ms:6.2f} ms/msg  clamd CPU {clamd_ms:6.2f} ms/msg"
        )
    print(f"  ratio module/direct: {med['module'][0] / med['direct'][0]:.2f} x p50 latency")


if __name__ == "__main__":
    main()
