"""MAILHOST_EVENT_LOOP: the setting's validation and what each value means (app/event_loop.py)."""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import pydantic
import pytest

from app import event_loop
from app.config import Settings


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("auto", True),
        ("asyncio", True),
        ("uvloop", True),
        ("UVLOOP", False),
        ("", False),
        ("trio", False),
        ("tokio", False),
    ],
)
def test_event_loop_setting_takes_three_values(
    value: str, accepted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILHOST_EVENT_LOOP", value)
    if accepted:
        assert Settings().event_loop == value
    else:
        with pytest.raises(pydantic.ValidationError, match="event_loop"):
            Settings()


def test_event_loop_default_is_auto() -> None:
    assert Settings(_env_file=None).event_loop == "auto"  # type: ignore[call-arg]


def _loop_of(choice: str) -> tuple[str, type[Any]]:
    async def which() -> tuple[str, type[Any]]:
        loop = asyncio.get_running_loop()
        return event_loop.loop_name(loop), type(loop)

    return event_loop.run(which(), choice=choice)


def test_asyncio_choice_runs_the_standard_loop() -> None:
    name, loop_type = _loop_of("asyncio")
    assert name == "asyncio"
    assert loop_type.__module__.startswith("asyncio")


def test_uvloop_choice_runs_uvloop() -> None:
    import uvloop

    name, loop_type = _loop_of("uvloop")
    assert name == "uvloop"
    assert issubclass(loop_type, uvloop.Loop)


def test_auto_takes_uvloop_when_importable() -> None:
    assert importlib.util.find_spec("uvloop") is not None  # a dependency in pyproject.toml
    assert _loop_of("auto")[0] == "uvloop"


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_loop, "uvloop_available", lambda: False)
    assert _loop_of("auto")[0] == "asyncio"


def test_uvloop_required_but_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(event_loop, "uvloop_available", lambda: False)

    async def never() -> None:
        raise AssertionError("must not run")

    with pytest.raises(event_loop.EventLoopUnavailable, match="MAILHOST_EVENT_LOOP=asyncio"):
        event_loop.run(never(), choice="uvloop")


def test_unknown_choice_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, asyncio, uvloop"):
        event_loop.resolve("trio")
