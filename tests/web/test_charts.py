"""Dashboard and customer charts: inline SVG (no script), the same numbers as a table and as
CSV, from the hourly counters the MX and POP3 write and the daily storage snapshot."""
# ruff: noqa: F811  (pytest fixtures imported from portal_helpers are redefined as arguments)

from __future__ import annotations

import csv
import datetime as dt
import io
import re
import smtplib
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app import hourly
from app.db import transaction
from app.maildir import MailboxRef, MaildirStore
from app.models import CustomerStorageDaily, Domain
from app.periodic import PeriodicJobs
from app.services import charts, queue
from tests.factories import seed_mailbox
from tests.protocol.conftest import smtp_start  # noqa: F401  (fixture)
from tests.protocol.smtp_helpers import IngressThread
from tests.web.portal_helpers import (  # noqa: F401  (fixtures)
    PortalClient,
    admin,
    portal_app,
)
from web.charts import Series, bar_chart, nice_ceiling, ranking_chart


def _section(html: str, section_id: str) -> str:
    match = re.search(rf'<section class="card" id="{section_id}">(.*?)</section>', html, re.S)
    assert match, section_id
    return match.group(1)


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_svg_renderer_escapes_labels_and_scales_to_a_nice_top() -> None:
    svg = bar_chart(title="a<b", labels=["<x>", "y"], series=[Series("s&t", [3, 7])])
    assert "<script" not in svg and "<x>" not in svg
    assert "&lt;x&gt;" in svg and "s&amp;t" in svg and "<title>a&lt;b</title>" in svg
    assert ">10</text>" in svg  # axis top: 7 rounds up to 10
    assert [nice_ceiling(v) for v in (0, 1, 3, 7, 24, 101)] == [1, 1, 5, 10, 25, 200]
    ranked = ranking_chart(title="t", labels=["big", "small"], values=[10.0, 5.0])
    widths = [float(w) for w in re.findall(r'<rect x="180" y="[\d.]+" width="([\d.]+)"', ranked)]
    assert widths[0] == 2 * widths[1]


def test_traffic_counted_by_the_mx_is_charted_tabled_and_in_csv(
    admin: PortalClient,
    session_factory: sessionmaker[Session],
    smtp_start: Callable[..., IngressThread],  # noqa: F811
) -> None:
    hourly._take()  # counts other tests' servers left pending in this process
    seed_mailbox(session_factory, "user@hosted.example")
    server = smtp_start()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.sendmail("a@remote.example", ["user@hosted.example"], "Subject: 1\n\nhi\n")
        client.sendmail("a@remote.example", ["user@hosted.example"], "Subject: 2\n\nhi\n")
        client.mail("a@remote.example")
        assert client.rcpt("nobody@hosted.example")[0] == 550
        client.rset()
    # Three hours ago, as a worker flushing late would write them.
    hourly.add("retrieved", 4, now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=3))
    assert hourly.flush(session_factory) == 2 + 1 + 4

    html = admin.get("/").text
    traffic = _section(html, "traffic")
    assert '<svg xmlns="http://www.w3.org/2000/svg"' in traffic and "<script" not in traffic
    now = hourly.hour_of(dt.datetime.now(dt.UTC))
    earlier = now - dt.timedelta(hours=3)
    assert (
        f'<tr><td>{now.strftime("%Y-%m-%d %H:00")}</td><td class="num">2</td>'
        f'<td class="num">1</td><td class="num">0</td></tr>'
    ) in traffic
    assert f'<td>{earlier.strftime("%Y-%m-%d %H:00")}</td><td class="num">0</td>' in traffic
    rows = _rows(admin.get("/dashboard/traffic.csv").text)
    assert rows[0] == ["hour_utc", "received", "refused", "retrieved"]
    assert len(rows) == 1 + 48
    assert rows[-1] == [now.isoformat(), "2", "1", "0"]
    assert rows[-4] == [earlier.isoformat(), "0", "0", "4"]


def test_storage_per_customer_snapshot_near_quota_and_customer_history(
    admin: PortalClient,
    portal_app: Any,
    session_factory: sessionmaker[Session],
    store: MaildirStore,
) -> None:
    seed_mailbox(session_factory, "big@hosted.example", quota=1000)
    store.deliver([(MailboxRef("hosted.example", "big"), [b"x" * 900])])
    portal_app.state.usage_cache.invalidate()  # the login's dashboard view cached an empty one
    with transaction(session_factory) as session:
        customer_id = session.scalar(select(Domain.customer_id))
    html = admin.get("/").text

    storage = _section(html, "storage")
    assert "<svg" in storage
    assert f'<a href="/customers/{customer_id}">Customer of hosted.example</a>' in storage
    assert '<td class="num">900</td>' in storage
    rows = _rows(admin.get("/dashboard/storage.csv").text)
    assert rows == [
        ["customer_id", "customer", "bytes", "messages", "mailboxes"],
        [str(customer_id), "Customer of hosted.example", "900", "1", "1"],
    ]
    with transaction(session_factory) as session:
        snapshot = session.scalars(select(CustomerStorageDaily)).one()
    assert (snapshot.customer_id, snapshot.bytes, snapshot.mailboxes) == (customer_id, 900, 1)
    assert snapshot.day == dt.datetime.now(dt.UTC).date()

    near = _section(html, "near-quota")
    assert "big@hosted.example" in near and '<td class="num">90</td>' in near

    queue = _section(html, "queue-depth")
    assert '<tr><td>queued</td><td class="num">0</td></tr>' in queue
    assert queue.count('<tr class="no-sample">') == 48  # nothing sampled the queue yet

    page = admin.get(f"/customers/{customer_id}").text
    history = _section(page, "history")
    assert history.count("<svg") == 2
    month = dt.datetime.now(dt.UTC).strftime("%Y-%m")
    assert re.search(
        rf'<tr><td>{month}</td><td class="num">1</td><td class="num">1</td>'
        rf'<td class="num">900[^<]*</td><td class="nowrap">{snapshot.day.isoformat()}</td></tr>',
        history,
    ), history
    assert '"nowrap">no snapshot</td>' in history
    csv_rows = _rows(admin.get(f"/customers/{customer_id}/history.csv").text)
    assert csv_rows[0] == [
        "month",
        "mailboxes_at_end",
        "peak_mailboxes",
        "storage_bytes",
        "storage_day",
    ]
    assert len(csv_rows) == 13
    assert csv_rows[-1] == [month, "1", "1", "900", snapshot.day.isoformat()]
    assert csv_rows[-2][3:] == ["", ""]  # last month: no snapshot, none invented
    with transaction(session_factory) as session:
        months = charts.customer_history(session, customer_id=customer_id)
    assert [m.month for m in months][-1] == month and len(months) == 12
    assert admin.get("/customers/999999/history.csv").status_code == 404


def test_queue_history_from_the_periodic_samples_is_charted_tabled_and_in_csv(
    admin: PortalClient, settings: Any, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    now = dt.datetime.now(dt.UTC)
    with transaction(session_factory) as session:
        queue.enqueue(
            session,
            spool_id="a" * 32,
            size=10,
            sender="a@hosted.example",
            recipients=["r1@remote.example", "r2@remote.example"],
            origin="submission",
            now=now - dt.timedelta(seconds=90),
        )
    PeriodicJobs(settings, session_factory, store).sample_queue(now)
    with transaction(session_factory) as session:  # two hours ago, from another sampler
        charts.record_queue_sample(
            session,
            slot=now - dt.timedelta(hours=2),
            depth={"queued": 0, "deferred": 7, "held": 1},
            oldest_age_seconds=3600.0,
        )
    hour = hourly.hour_of(now)
    earlier = hour - dt.timedelta(hours=2)

    queue_html = _section(admin.get("/").text, "queue-depth")
    assert "<svg" in queue_html and "<script" not in queue_html
    assert "deferred 7</title>" in queue_html  # the bar of two hours ago
    assert (
        f'<tr><td>{hour.strftime("%Y-%m-%d %H:00")}</td><td class="num">1</td>'
        f'<td class="num">2</td><td class="num">0</td><td class="num">0</td>'
        f'<td class="num">90</td></tr>'
    ) in queue_html
    assert (
        f'<tr><td>{earlier.strftime("%Y-%m-%d %H:00")}</td><td class="num">1</td>'
        f'<td class="num">0</td><td class="num">7</td><td class="num">1</td>'
        f'<td class="num">3600</td></tr>'
    ) in queue_html
    assert queue_html.count('<tr class="no-sample">') == 46

    rows = _rows(admin.get("/dashboard/queue.csv").text)
    assert rows[0] == ["hour_utc", "samples", "queued", "deferred", "held", "oldest_age_seconds"]
    assert len(rows) == 1 + 48
    assert rows[-1] == [hour.isoformat(), "1", "2", "0", "0", "90"]
    assert rows[-3] == [earlier.isoformat(), "1", "0", "7", "1", "3600"]
    assert rows[-2] == [(hour - dt.timedelta(hours=1)).isoformat(), "0", "", "", "", ""]
