"""Parallel password guessing against real servers: POP3 on port 0 and the portal under
uvicorn, attacked from 127.0.0.1 while the real user logs in from 127.0.0.2."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import uvicorn
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MaildirStore
from app.services import throttle
from tests.factories import DEFAULT_PASSWORD, make_operator, seed_mailbox
from tests.protocol.pop3_helpers import TIMEOUT, running_server

ALICE = "alice@a.example"
BUDGET = 5
THROTTLED = b"-ERR [SYS/TEMP] Too many failed logins, try again later"
AUTH_FAILED = b"-ERR [AUTH] Authentication failed"


def charged(session_factory: sessionmaker[Session], key: str) -> int:
    with session_factory() as db:
        return throttle.charged(db, key=key, refill_seconds=3600, now=throttle.utcnow())


def pop3_login(
    port: int, source: str, user: str, password: str, barrier: threading.Barrier | None = None
) -> bytes:
    with socket.create_connection(
        ("127.0.0.1", port), timeout=TIMEOUT, source_address=(source, 0)
    ) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(f"USER {user}\r\n".encode())
        assert reader.readline().startswith(b"+OK")
        if barrier is not None:
            barrier.wait()
        sock.sendall(f"PASS {password}\r\n".encode())
        reply = reader.readline().rstrip(b"\r\n")
        sock.sendall(b"QUIT\r\n")
        reader.readline()
        return reply


def test_twenty_parallel_pop3_guesses_from_one_address_check_at_most_the_budget(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> None:
    seed_mailbox(session_factory, ALICE)
    cfg = settings.model_copy(
        update={"login_address_budget": BUDGET, "login_address_refill_seconds": 3600.0}
    )
    with running_server(cfg, session_factory=session_factory, store=store) as server:
        barrier = threading.Barrier(20)
        with ThreadPoolExecutor(max_workers=20) as pool:
            replies = list(
                pool.map(
                    lambda i: pop3_login(server.port, "127.0.0.1", ALICE, f"guess {i}", barrier),
                    range(20),
                )
            )
        assert set(replies) <= {AUTH_FAILED, THROTTLED}, replies
        # Every reply is one or the other; at most BUDGET passwords were checked.
        assert replies.count(AUTH_FAILED) <= BUDGET
        assert replies.count(THROTTLED) >= 20 - BUDGET
        assert charged(session_factory, "mail:ip:127.0.0.1") == replies.count(AUTH_FAILED)
        # The attacker's address is refused even with the right password...
        assert pop3_login(server.port, "127.0.0.1", ALICE, DEFAULT_PASSWORD) == THROTTLED
        # ...while the user at another address logs in without waiting for any penalty.
        began = time.monotonic()
        reply = pop3_login(server.port, "127.0.0.2", ALICE, DEFAULT_PASSWORD)
        assert reply.startswith(b"+OK Logged in"), reply
        assert time.monotonic() - began < 5  # no sleeping: only the password hash is paid


@pytest.fixture
def live_portal(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> Iterator[str]:
    from web.app import create_app

    with transaction(session_factory) as db:
        make_operator(db, "alice")
    cfg = settings.model_copy(
        update={"login_address_budget": BUDGET, "login_address_refill_seconds": 3600.0}
    )
    app = create_app(cfg, session_factory=session_factory, store=store)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def portal_login(
    url: str, source: str, password: str, barrier: threading.Barrier | None = None
) -> int:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(base_url=url, transport=transport, timeout=60) as client:
        page = client.get("/login")
        token = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
        if barrier is not None:
            barrier.wait()
        response = client.post(
            "/login",
            data={"username": "alice", "password": password, "csrf_token": token},
            follow_redirects=False,
        )
        return response.status_code


def test_sixty_parallel_portal_guesses_are_mostly_refused_at_once(
    live_portal: str, session_factory: sessionmaker[Session]
) -> None:
    barrier = threading.Barrier(60)
    with ThreadPoolExecutor(max_workers=60) as pool:
        statuses = list(
            pool.map(
                lambda i: portal_login(live_portal, "127.0.0.1", f"guess {i}", barrier), range(60)
            )
        )
    assert set(statuses) <= {400, 429}, statuses
    assert statuses.count(400) <= BUDGET  # passwords actually checked
    assert statuses.count(429) >= 60 - BUDGET
    assert charged(session_factory, "portal:ip:127.0.0.1") == statuses.count(400)
    # The operator at another address gets in at once, the attacker's address does not.
    assert portal_login(live_portal, "127.0.0.1", DEFAULT_PASSWORD) == 429
    began = time.monotonic()
    assert portal_login(live_portal, "127.0.0.2", DEFAULT_PASSWORD) == 303
    assert time.monotonic() - began < 5
