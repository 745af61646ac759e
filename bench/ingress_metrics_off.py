"""``python -m bench.ingress_metrics_off``: ``python -m smtp_ingress`` with every Prometheus
instrument replaced by one that does nothing (the "metrics off" side of
``bench/tracking_ingest.py --compare metrics``). Benchmark only: the platform has no
switch to turn metrics off; this measures what the hooks cost."""

from __future__ import annotations

from typing import Any

from app import metrics


class _NullMetric:
    def labels(self, *args: Any) -> _NullMetric:
        return self

    def inc(self, *args: Any) -> None:
        pass

    dec = set = observe = inc


class _NullInstruments:
    def child(self, *args: Any) -> _NullMetric:
        return _NULL

    def __getattr__(self, name: str) -> _NullMetric:
        return _NULL


_NULL = _NullMetric()
_INSTRUMENTS = _NullInstruments()


def _instruments() -> Any:
    return _INSTRUMENTS


def main() -> None:
    metrics.instruments = _instruments  # every edge helper looks it up at each call
    from smtp_ingress.__main__ import main as ingress_main

    ingress_main()


if __name__ == "__main__":
    main()
