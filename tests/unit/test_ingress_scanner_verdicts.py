"""The MX's scanner-verdict labels (``app.metrics.scanner_verdict``): one row per scan outcome."""

from __future__ import annotations

import pytest

from app.scanning.decision import Action
from smtp_ingress.scanning import scanner_verdict

ROWS = [
    # action, counted outcome (ScanGlue._count_scan), expected (scanner, verdict)
    (Action.ACCEPT, "clean", ("rspamd", "clean")),
    (Action.ALLOWED, "clean", ("rspamd", "clean")),
    (Action.ACCEPT, "tagged", ("rspamd", "spam")),
    (Action.TAG, "tagged", ("rspamd", "spam")),
    (Action.REJECT, "rejected", ("rspamd", "spam")),
    (Action.VIRUS, "rejected", ("clamd", "virus")),
    (Action.UNSCANNED, "unscanned", ("rspamd", "error")),
    (Action.TEMPFAIL, "deferred", ("rspamd", "error")),
]


@pytest.mark.parametrize(("action", "outcome", "expected"), ROWS)
def test_scanner_verdict(action: Action, outcome: str, expected: tuple[str, str]) -> None:
    assert scanner_verdict(action, outcome) == expected


def test_the_handler_keeps_its_names() -> None:
    """What server.py and the tests import from the handler module after the split."""
    from smtp_ingress import handler

    for name in handler.__all__:
        assert getattr(handler, name) is not None
    assert issubclass(handler.IngressHandler, handler.ScanGlue)
