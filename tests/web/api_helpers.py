"""API test helpers: the app over a real database, tokens per scope, a real server thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MaildirStore
from app.services import accounts
from app.services.audit import CLI_ACTOR
from web.app import create_app

PROBLEM = "application/problem+json"


def build_app(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> FastAPI:
    """The real application (portal + API), exactly as ``mailhost web`` builds it."""
    return create_app(settings, session_factory=session_factory, store=store)


def make_token(factory: sessionmaker[Session], *scopes: str, name: str | None = None) -> str:
    with transaction(factory) as session:
        _, plaintext = accounts.create_token(
            session, actor=CLI_ACTOR, name=name or "+".join(scopes), scopes=scopes
        )
    return plaintext


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Api:
    """A TestClient plus one token per scope (and one with every scope)."""

    client: TestClient
    factory: sessionmaker[Session]
    store: MaildirStore
    provisioning: str
    read: str
    billing: str
    admin: str  # provisioning + read + billing:read

    def call(self, method: str, url: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}) or {})
        if token is not None:
            headers.update(bearer(token))
        return self.client.request(method, url, headers=headers, **kw)

    def get(self, url: str, token: str | None = None, **kw: Any) -> httpx.Response:
        return self.call("GET", url, self.admin if token is None else token, **kw)

    def post(
        self, url: str, json: Any = None, token: str | None = None, **kw: Any
    ) -> httpx.Response:
        return self.call("POST", url, self.admin if token is None else token, json=json, **kw)

    def patch(self, url: str, json: Any, token: str | None = None, **kw: Any) -> httpx.Response:
        return self.call("PATCH", url, self.admin if token is None else token, json=json, **kw)

    def delete(self, url: str, token: str | None = None, **kw: Any) -> httpx.Response:
        return self.call("DELETE", url, self.admin if token is None else token, **kw)

    def created(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        response = self.post(url, body)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data


@pytest.fixture(name="api")
def api_fixture(
    settings: Settings, session_factory: sessionmaker[Session], store: MaildirStore
) -> Iterator[Api]:
    app = build_app(settings, session_factory, store)
    with TestClient(app) as client:
        yield Api(
            client=client,
            factory=session_factory,
            store=store,
            provisioning=make_token(session_factory, "provisioning"),
            read=make_token(session_factory, "read"),
            billing=make_token(session_factory, "billing:read"),
            admin=make_token(session_factory, "provisioning", "read", "billing:read", name="admin"),
        )


def assert_problem(
    response: httpx.Response, status: int, field: str | None = None
) -> dict[str, Any]:
    """A well-formed RFC 9457 problem document with this status (and naming this field)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:mailhost:problem:")
    assert body["title"]
    assert body["detail"]
    if field is not None:
        fields = [body.get("field")] + [e["field"] for e in body.get("errors", [])]
        assert field in fields, body
    return body


class ServerThread:
    """uvicorn serving ``app`` on 127.0.0.1, port 0, in a background thread."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the API server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
