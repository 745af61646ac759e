"""``mailhost token add --customer``: API tokens bound to one customer (issue 15)."""

from __future__ import annotations

from sqlalchemy.orm import Session, sessionmaker

from app.services import accounts
from tests.unit.test_cli import Run, run  # noqa: F401


def test_token_add_for_a_customer(run: Run, session_factory: sessionmaker[Session]) -> None:  # noqa: F811
    assert run("customer", "add", "Acme").status == 0
    r = run("token", "add", "acme sync", "--scope", "read", "--customer", "Acme", "--json")
    assert r.status == 0, r.err
    created = r.json()
    with session_factory() as s:
        row = accounts.verify_token(s, token=created["token"])
        assert row is not None and row.customer_id is not None
        assert created["customer"] == row.customer_id
    listed = run("token", "list", "--json").json()
    assert [t["customer"] for t in listed] == [created["customer"]]
    queue = run("token", "add", "q", "--scope", "queue", "--customer", "Acme")
    assert queue.status != 0 and "queue" in queue.err
    nobody = run("token", "add", "n", "--scope", "read", "--customer", "Nobody")
    assert nobody.status != 0 and "Nobody" in nobody.err
    assert len(run("token", "list", "--json").json()) == 1
