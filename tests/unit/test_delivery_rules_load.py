"""DeliveryRules.load through a Core Connection (the ingress's way, with the driver-cursor
pre-check ``mailboxes_with_rules``) finds what it finds through a Session."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from app.config import Settings
from app.delivery_rules import DeliveryRules, mailboxes_with_rules
from app.services import selfservice
from app.services.audit import CLI_ACTOR
from app.spool import SpoolStore
from tests.factories import make_mailbox


def test_rules_through_a_connection_equal_those_through_a_session(
    session: Session, engine: Engine, settings: Settings
) -> None:
    ids = {
        name: make_mailbox(session, f"{name}@hosted.example").id
        for name in ("plain", "fwd", "away", "both", "off")
    }
    selfservice.set_forward(
        session, actor=CLI_ACTOR, mailbox_id=ids["fwd"], address="x@remote.example", keep_copy=True
    )
    selfservice.set_auto_reply(
        session, actor=CLI_ACTOR, mailbox_id=ids["away"], subject="s", body="b"
    )
    selfservice.set_forward(
        session,
        actor=CLI_ACTOR,
        mailbox_id=ids["both"],
        address="plain@hosted.example",
        keep_copy=False,
    )
    selfservice.set_auto_reply(
        session, actor=CLI_ACTOR, mailbox_id=ids["both"], subject="t", body="c"
    )
    selfservice.set_auto_reply(
        session, actor=CLI_ACTOR, mailbox_id=ids["off"], subject="u", body="d", enabled=False
    )
    session.commit()
    rules = DeliveryRules(settings, spool=SpoolStore(settings.spool_root))
    every = list(ids.values()) + [10_000]  # and one that does not exist
    with engine.connect() as connection:
        assert mailboxes_with_rules(connection, ids=every) == {
            ids["fwd"],
            ids["away"],
            ids["both"],
            ids["off"],
        }
        assert mailboxes_with_rules(connection, ids=[ids["plain"]]) == set()
        assert mailboxes_with_rules(connection, ids=[]) == set()
        via_connection = rules.load(connection, mailbox_ids=every)
        assert rules.load(connection, mailbox_ids=[ids["plain"]]) == {}
    via_session = rules.load(session, mailbox_ids=every)
    assert via_connection == via_session
    assert set(via_connection) == {ids["fwd"], ids["away"], ids["both"], ids["off"]}
    assert via_connection[ids["both"]].forward_hosted and via_connection[ids["both"]].reply
    assert via_connection[ids["off"]].reply is None
