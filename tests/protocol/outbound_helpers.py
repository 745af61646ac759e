"""Outbound test tools: aiosmtpd sinks on 127.0.0.x sharing one port, an agent per test."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.db import transaction
from app.maildir import MaildirStore
from app.models import OutboundMessage, OutboundRecipient
from app.services import queue
from app.spool import SpoolStore
from smtp_outbound.agent import DeliveryAgent

T0 = dt.datetime.now(dt.UTC).replace(microsecond=0)


def free_port(host: str = "127.0.0.2") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    tls: bool
    peer: Any = None  # (address, port) of the client's connection


@dataclass
class SinkHandler:
    """Accepts everything unless told otherwise: ``rcpt_replies`` are used up one by one."""

    received: list[Received] = field(default_factory=list)
    rcpt_replies: list[str] = field(default_factory=list)
    data_started: threading.Event = field(default_factory=threading.Event)
    stall: threading.Event | None = None

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.rcpt_replies:
            reply = self.rcpt_replies.pop(0)
            if not reply.startswith("250"):
                return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_started.set()
        stall, self.stall = self.stall, None  # only the first DATA waits
        if stall is not None:
            while not stall.is_set():
                await asyncio.sleep(0.05)
        self.received.append(
            Received(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content or b"",
                session.ssl is not None,
                session.peer,
            )
        )
        return "250 2.0.0 queued at sink"


class Sink:
    """A real SMTP server on ``host``:``port`` (aiosmtpd in its own thread)."""

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext | None = None) -> None:
        self.handler = SinkHandler()
        self.controller = Controller(
            self.handler,
            hostname=host,
            port=port,
            tls_context=tls,
            require_starttls=False,
            server_hostname="sink.test.example",
            ready_timeout=10,
        )

    def start(self) -> Sink:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    @property
    def received(self) -> list[Received]:
        return self.handler.received


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def outbound_settings(settings: Settings, tmp_path: Path, dns_port: int, port: int) -> Settings:
    return settings.model_copy(
        update={
            "spool_root": tmp_path / "spool",
            "delivery_port": port,
            "delivery_nameservers": ["127.0.0.1"],
            "delivery_dns_port": dns_port,
            "delivery_dns_timeout": 5.0,
            "delivery_connect_timeout": 5.0,
            "delivery_command_timeout": 10.0,
            "delivery_lease_seconds": 600.0,
        }
    )


class Clock:
    def __init__(self, now: dt.datetime = T0) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def make_agent(
    settings: Settings,
    factory: sessionmaker[Session],
    store: MaildirStore,
    clock: Clock,
    worker: str = "test-worker",
) -> DeliveryAgent:
    return DeliveryAgent(
        settings,
        factory,
        spool=SpoolStore(settings.spool_root),
        store=store,
        clock=clock,
        worker=worker,
    )


def run_once(agent: DeliveryAgent) -> int:
    return asyncio.run(agent.run_once())


MESSAGE = (
    b"From: Alice <alice@hosted.example>\r\nTo: bob@remote.example\r\n"
    b"Subject: outbound test\r\nMessage-ID: <t1@hosted.example>\r\n\r\nHello Bob.\r\n"
)


def enqueue(
    settings: Settings,
    factory: sessionmaker[Session],
    recipients: list[str],
    *,
    sender: str = "alice@hosted.example",
    data: bytes = MESSAGE,
    now: dt.datetime = T0,
) -> str:
    file = SpoolStore(settings.spool_root).write([data])
    with transaction(factory) as s:
        return queue.enqueue(
            s,
            spool_id=file.spool_id,
            size=file.size,
            sender=sender,
            recipients=recipients,
            origin="submission",
            now=now,
        ).queue_id


def rows(factory: sessionmaker[Session]) -> list[tuple[OutboundMessage, OutboundRecipient]]:
    with factory() as s:
        return [
            (m, r)
            for r, m in s.execute(
                select(OutboundRecipient, OutboundMessage)
                .join(OutboundMessage)
                .order_by(OutboundRecipient.id)
            ).all()
        ]


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)
