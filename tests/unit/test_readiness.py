"""The readiness line: one format for every service, written and parsed by ``app.readiness``."""

from __future__ import annotations

import pytest

from app.readiness import Ready, parse_ready_line, ready_line


@pytest.mark.parametrize(
    ("service", "listeners", "line"),
    [
        ("smtp", [("smtp", "127.0.0.1", 2525)], "ready smtp pid=42 smtp=127.0.0.1:2525"),
        (
            "pop3",
            [("pop3", "0.0.0.0", 1110), ("pop3s", "0.0.0.0", 995)],
            "ready pop3 pid=42 pop3=0.0.0.0:1110 pop3s=0.0.0.0:995",
        ),
        ("web", [("web", "::1", 8000)], "ready web pid=42 web=[::1]:8000"),
        (
            "serve",
            [("smtp", "127.0.0.1", 1), ("pop3", "127.0.0.1", 2), ("web", "127.0.0.1", 3)],
            "ready serve pid=42 smtp=127.0.0.1:1 pop3=127.0.0.1:2 web=127.0.0.1:3",
        ),
    ],
)
def test_the_line_is_written_and_read_back(
    service: str, listeners: list[tuple[str, str, int]], line: str
) -> None:
    assert ready_line(service, 42, listeners) == line
    parsed = parse_ready_line(line + "\n")
    assert parsed == Ready(service=service, pid=42, listeners={n: (h, p) for n, h, p in listeners})


@pytest.mark.parametrize(
    "line",
    [
        "",
        "READY 2525",  # the old POP3 format
        "ready pid=42 port=2525",  # the old SMTP format: no service word
        "mailhost: ready: smtp 127.0.0.1:2525",  # the old serve format
        "ready smtp pid=x smtp=127.0.0.1:2525",
        "ready smtp pid=42 smtp=127.0.0.1",
        "ready smtp pid=42 smtp=::1:2525",  # IPv6 must be bracketed
        "2026-12-02 INFO ready smtp pid=42 smtp=127.0.0.1:2525",  # a log line mentioning it
    ],
)
def test_anything_else_is_not_a_readiness_line(line: str) -> None:
    assert parse_ready_line(line) is None
