"""Browser-test fixtures: a real uvicorn portal and SMTP ingress on port 0, headless Chromium.

Chromium is Debian's ``/usr/bin/chromium`` driven by Playwright (never ``playwright install``).
Without it the tests skip locally with the reason, and FAIL when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MaildirStore
from tests.conftest import in_ci
from tests.factories import make_operator
from web.app import create_app

CHROMIUM = os.environ.get("MAILHOST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOT_DIR = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _need_chromium() -> str:
    path = shutil.which(CHROMIUM) or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    if path is None:
        message = f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass
class LiveServer:
    url: str
    smtp_port: int
    settings: Settings
    session_factory: sessionmaker[Session]
    store: MaildirStore


@pytest.fixture
def live(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> Iterator[LiveServer]:
    """The portal under uvicorn and the SMTP ingress, both real, both on port 0."""
    from smtp_ingress.server import SmtpIngress

    with transaction(session_factory) as session:
        make_operator(session, "alice", role="admin")
        make_operator(session, "sam", role="support")

    app = create_app(settings, session_factory=session_factory, store=store)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    web_thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    web_thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)

    loop = asyncio.new_event_loop()
    smtp_thread = threading.Thread(target=loop.run_forever, daemon=True)
    smtp_thread.start()
    ingress = SmtpIngress(settings, session_factory=session_factory, store=store)
    asyncio.run_coroutine_threadsafe(ingress.start(), loop).result(15)
    try:
        yield LiveServer(
            url=f"http://127.0.0.1:{sock.getsockname()[1]}",
            smtp_port=ingress.port,
            settings=settings,
            session_factory=session_factory,
            store=store,
        )
    finally:
        asyncio.run_coroutine_threadsafe(ingress.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        smtp_thread.join(10)
        server.should_exit = True
        web_thread.join(15)
        sock.close()


@pytest.fixture(scope="package")  # stopped before other packages: its loop stays on this thread
def browser() -> Iterator[Any]:
    executable = _need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    # Chromium reports what the Content-Security-Policy blocked on the console: an inline
    # style or script the portal still uses would be silently broken for operators.
    blocked: list[str] = []
    page.on(
        "console",
        lambda msg: blocked.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    yield page
    context.close()
    assert blocked == [], blocked


def shot(page: Any, name: str) -> None:
    """Save a full-page screenshot as a test artifact."""
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT_DIR / f"{name}.png"), full_page=True)


def login(page: Any, base: str, username: str, password: str = "correct horse") -> None:
    page.goto(f"{base}/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/")
