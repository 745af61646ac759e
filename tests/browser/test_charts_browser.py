"""The dashboard's charts in headless Chromium with JavaScript off: the SVG is drawn, the
numbers are in the table and the CSV link downloads them."""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Any

from app import hourly
from tests.browser.conftest import LiveServer, login, shot
from tests.factories import seed_mailbox


def test_traffic_chart_table_and_csv_without_javascript(live: LiveServer, browser: Any) -> None:
    hourly._take()  # counts other tests' servers left pending in this process
    seed_mailbox(live.session_factory, "user@hosted.example")
    with smtplib.SMTP("127.0.0.1", live.smtp_port, timeout=10) as client:
        for i in range(3):
            client.sendmail("a@remote.example", ["user@hosted.example"], f"Subject: {i}\n\nx\n")
    hourly.flush(live.session_factory)

    context = browser.new_context(java_script_enabled=False, accept_downloads=True)
    page = context.new_page()
    try:
        login(page, live.url, "alice")
        chart = page.locator("#traffic svg.chart")
        assert chart.is_visible()
        box = chart.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 80
        page.click("#traffic summary")  # <details> opens without script
        last_row = page.locator("#traffic-table tbody tr").first
        assert last_row.locator("td").nth(1).inner_text() == "3"
        shot(page, "30-dashboard-charts")
        with page.expect_download() as info:
            page.click("text=Download as CSV >> nth=0")
        text = Path(info.value.path()).read_text()
        assert text.splitlines()[0] == "hour_utc,received,refused,retrieved"
        assert text.splitlines()[-1].endswith(",3,0,0")
    finally:
        context.close()
