"""``mailhost queue ...`` and ``mailhost deliver --once`` as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from tests.dnsserver import TestDNSServer
from tests.protocol.outbound_helpers import Sink, enqueue, free_port, outbound_settings, rows

REPO = Path(__file__).resolve().parents[2]


def test_queue_commands_and_deliver_once(
    settings: Settings,
    tmp_path: Path,
    dns_server: TestDNSServer,
    session_factory: sessionmaker[Session],
) -> None:
    port = free_port()
    out = outbound_settings(settings, tmp_path, dns_server.port, port)
    dns_server.zone.mx("remote.example", (10, "mx.remote.example"))
    dns_server.zone.a("mx.remote.example", "127.0.0.3")
    env = {
        **os.environ,
        "MAILHOST_DATABASE_URL": out.database_url,
        "MAILHOST_MAILDIR_ROOT": str(out.maildir_root),
        "MAILHOST_SPOOL_ROOT": str(out.spool_root),
        "MAILHOST_HOSTNAME": out.hostname,
        "MAILHOST_DELIVERY_PORT": str(port),
        "MAILHOST_DELIVERY_NAMESERVERS": json.dumps(["127.0.0.1"]),
        "MAILHOST_DELIVERY_DNS_PORT": str(dns_server.port),
        "MAILHOST_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO),
    }

    def mailhost(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "mailhost", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (result.returncode == 0) is ok, result.stderr
        return result

    qid = enqueue(out, session_factory, ["bob@remote.example"])
    [listed] = json.loads(mailhost("queue", "list", "--json").stdout)
    assert (listed["queue_id"], listed["sender"], listed["recipients"]) == (
        qid,
        "alice@hosted.example",
        "1 queued",
    )
    assert mailhost("queue", "hold", qid.lower()).stdout == f"{qid}: hold done\n"
    shown = json.loads(mailhost("queue", "show", qid, "--json").stdout)
    assert [r["state"] for r in shown["recipients"]] == ["held"]
    refused = mailhost("queue", "hold", qid, ok=False)
    assert refused.stderr == f"mailhost: error: {qid} has no queued or deferred recipient to hold\n"
    assert "not found" in mailhost("queue", "show", "0000", ok=False).stderr

    sink = Sink("127.0.0.3", port).start()
    try:
        mailhost("deliver", "--once")  # held: nothing goes out
        assert sink.received == []
        mailhost("queue", "release", qid)
        mailhost("deliver", "--once")
        assert [r.recipients for r in sink.received] == [["bob@remote.example"]]
    finally:
        sink.stop()
    assert [r.state for _, r in rows(session_factory)] == ["delivered"]
    assert json.loads(mailhost("queue", "list", "--json").stdout) == []
    [done] = json.loads(mailhost("queue", "list", "--state", "delivered", "--json").stdout)
    assert done["queue_id"] == qid
    assert mailhost("queue", "delete", qid).stdout == f"{qid}: deleted\n"
    assert rows(session_factory) == []
