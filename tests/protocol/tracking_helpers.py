"""What the tracking tests read back: refusal counters by label, events by search, and the
(stage, reply code) pairs of the refused ones."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from app import metrics
from app.models import MessageEvent
from app.services import tracking

PROTOCOL_REFUSALS = "mailhost_protocol_refusals_total"


def refusal_counts(name: str = PROTOCOL_REFUSALS) -> dict[tuple[str, ...], float]:
    """Samples of one counter of this process by their labels (service, stage, reply_class)."""
    text = metrics.render(metrics.Exposition()).decode()
    found: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                labels = sample.labels
                key = (labels["service"], labels["stage"], labels["reply_class"])
                found[key] = sample.value
    return found


def events(factory: sessionmaker[Session], **query: str) -> list[MessageEvent]:
    with factory() as session:
        return list(tracking.search(session, query=tracking.normalise_query(**query), limit=200))


def refused(found: list[MessageEvent]) -> list[tuple[str | None, str]]:
    return [(e.stage, (e.reply or "")[:3]) for e in found if e.kind == "refused"]
