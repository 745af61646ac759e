"""Delivery agent faults: a worker killed mid-delivery, two workers on one PostgreSQL queue."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.maildir import MaildirStore
from tests.conftest import require_postgres
from tests.dnsserver import TestDNSServer
from tests.protocol.outbound_helpers import (
    Clock,
    Sink,
    enqueue,
    free_port,
    make_agent,
    outbound_settings,
    rows,
    run_once,
)

REPO = Path(__file__).resolve().parents[2]


def test_sigkill_mid_delivery_is_delivered_after_the_lease(
    settings: Settings,
    tmp_path: Path,
    dns_server: TestDNSServer,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
) -> None:
    port = free_port()
    out = outbound_settings(settings, tmp_path, dns_server.port, port)
    dns_server.zone.mx("remote.example", (10, "mx.remote.example"))
    dns_server.zone.a("mx.remote.example", "127.0.0.3")
    sink = Sink("127.0.0.3", port).start()
    try:
        stall = threading.Event()
        sink.handler.stall = stall
        enqueue(out, session_factory, ["bob@remote.example"], now=dt.datetime.now(dt.UTC))
        env = {
            **os.environ,
            "MAILHOST_DATABASE_URL": out.database_url,
            "MAILHOST_MAILDIR_ROOT": str(out.maildir_root),
            "MAILHOST_SPOOL_ROOT": str(out.spool_root),
            "MAILHOST_HOSTNAME": out.hostname,
            "MAILHOST_DELIVERY_PORT": str(port),
            "MAILHOST_DELIVERY_NAMESERVERS": json.dumps(["127.0.0.1"]),
            "MAILHOST_DELIVERY_DNS_PORT": str(dns_server.port),
            "MAILHOST_DELIVERY_POLL_INTERVAL": "0.1",
            "PYTHONPATH": str(REPO),
        }
        worker = subprocess.Popen(
            [sys.executable, "-m", "smtp_outbound"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            # The worker is inside DATA when it dies: no reply reached it, nothing recorded.
            assert sink.handler.data_started.wait(30), worker.stderr
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(10)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
        stall.set()  # the sink may now finish the dead session's copy (a duplicate, not a loss)
        [(_, row)] = rows(session_factory)
        assert (row.state, row.attempts) == ("queued", 0)
        assert row.lease_owner is not None and row.lease_until is not None
        # Another worker leaves the row alone while the lease runs ...
        clock = Clock(dt.datetime.now(dt.UTC))
        agent = make_agent(out, session_factory, store, clock, worker="survivor")
        assert run_once(agent) == 0
        # ... and delivers it once the lease has expired: never lost.
        clock.now = row.lease_until + dt.timedelta(seconds=1)
        assert run_once(agent) == 1
        [(_, row)] = rows(session_factory)
        assert (row.state, row.attempts, row.last_reply_code) == ("delivered", 1, 250)
        assert sink.received[-1].recipients == ["bob@remote.example"]
    finally:
        sink.stop()


@pytest.mark.postgres
def test_two_workers_on_postgresql_never_deliver_one_row_twice(
    engine: Engine,
    settings: Settings,
    tmp_path: Path,
    dns_server: TestDNSServer,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
) -> None:
    require_postgres(engine)
    port = free_port()
    out = outbound_settings(settings, tmp_path, dns_server.port, port).model_copy(
        update={"delivery_batch_size": 3}
    )
    hosts = {f"d{n}.example": f"127.0.0.{10 + n}" for n in range(4)}
    sinks = []
    for domain, address in hosts.items():
        dns_server.zone.mx(domain, (10, f"mx.{domain}"))
        dns_server.zone.a(f"mx.{domain}", address)
        sinks.append(Sink(address, port).start())
    try:
        expected = []
        for n in range(40):
            rcpt = f"user{n}@d{n % 4}.example"
            expected.append(rcpt)
            enqueue(out, session_factory, [rcpt])
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def work(name: str) -> None:
            agent = make_agent(out, session_factory, store, Clock(), worker=name)
            barrier.wait()
            try:
                while run_once(agent):
                    pass
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        delivered = [r for sink in sinks for got in sink.received for r in got.recipients]
        assert sorted(delivered) == sorted(expected)
        assert {r.state for _, r in rows(session_factory)} == {"delivered"}
    finally:
        for sink in sinks:
            sink.stop()
