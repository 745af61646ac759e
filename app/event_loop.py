"""The event loop every server process runs on: asyncio's own or uvloop (MAILHOST_EVENT_LOOP).

Theory of operation. Each entry point (``mailhost serve``, a prefork worker of ``mailhost
smtp|pop3|web|submission``, ``python -m smtp_ingress`` and the other edges' ``__main__``, the
delivery agent) calls ``run(main, choice=settings.event_loop)`` instead of ``asyncio.run``.
``auto`` takes uvloop when it can be imported (it is a dependency, so normally it is) and
asyncio's default loop otherwise; ``uvloop`` insists on it (a clear error when it is missing);
``asyncio`` keeps the standard library's loop, for debugging or for comparing the two.
Nothing else in the tree knows which loop it is on: both implement the same interface.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

log = logging.getLogger("mailhost.event_loop")

EventLoopChoice = Literal["auto", "asyncio", "uvloop"]
CHOICES: tuple[EventLoopChoice, ...] = ("auto", "asyncio", "uvloop")

T = TypeVar("T")


class EventLoopUnavailable(RuntimeError):
    """MAILHOST_EVENT_LOOP=uvloop, but uvloop cannot be imported."""


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve(choice: str) -> Literal["asyncio", "uvloop"]:
    """The loop ``choice`` means on this machine."""
    if choice == "asyncio":
        return "asyncio"
    if choice == "uvloop":
        if not uvloop_available():
            raise EventLoopUnavailable(
                "MAILHOST_EVENT_LOOP=uvloop but uvloop is not installed "
                "(pip install uvloop, or set MAILHOST_EVENT_LOOP=asyncio)"
            )
        return "uvloop"
    if choice == "auto":
        return "uvloop" if uvloop_available() else "asyncio"
    raise ValueError(f"event loop must be one of {', '.join(CHOICES)}, not {choice!r}")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A factory for ``asyncio.Runner``; None means asyncio's default loop."""
    if resolve(choice) == "asyncio":
        return None
    import uvloop

    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: what a process runs on (logged at start, shown by tests)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], *, choice: str) -> T:
    """``asyncio.run(main)`` on the loop ``choice`` names."""
    try:
        factory = loop_factory(choice)
    except BaseException:
        main.close()  # never awaited: say so quietly instead of a "never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        log.info("event loop: %s", loop_name(runner.get_loop()))
        return runner.run(main)
