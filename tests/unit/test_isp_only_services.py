"""ISP-only service functions refuse a customer's actor in the service layer (issue 15).

Table-driven: every function named here must carry ``tenancy.isp_only`` and raise
``PermissionDeniedError`` for a customer administrator's actor (and a customer-bound token's)
before it reads or writes anything; and every function in ``app.services`` that carries the
mark is in the table, so the table cannot silently fall behind.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session

import app.services
from app.errors import PermissionDeniedError
from app.models import AuditEntry
from app.services.audit import Actor
from app.services.tenancy import ISP_ONLY_MARK

ISP_ONLY = {
    "accounts": ["create_operator", "set_operator_password", "delete_operator", "list_operators"],
    "customers": ["list_customers"],
    "dkim": ["generate_key", "rotate_key", "retire_key"],
    "domains": ["remove_domain_alias"],
    "queue_admin": [
        "list_queue",
        "retry_message",
        "hold_message",
        "release_message",
        "delete_message",
    ],
    "relay": [
        "create_relay_domain",
        "convert_to_relay",
        "update_relay",
        "flush",
        "hold",
        "release",
        "delete_relay_domain",
    ],
    "relay_recipients": ["add_recipient", "remove_recipient", "import_recipients"],
    "scan_policy": ["set_override", "add_list_entry", "remove_list_entry"],
    "sending_admin": ["set_mailbox_sending", "set_customer_limits"],
}
ROWS = [(module, name) for module, names in ISP_ONLY.items() for name in names]
CUSTOMER_ACTORS = [
    Actor("customer_admin", "carol", "127.0.0.1", customer_id=1),
    Actor("token", "acme-tool", "127.0.0.1", customer_id=1),
]


def _function(module: str, name: str) -> Callable[..., Any]:
    function: Callable[..., Any] = getattr(importlib.import_module(f"app.services.{module}"), name)
    return function


@pytest.mark.parametrize(("module", "name"), ROWS)
@pytest.mark.parametrize("actor", CUSTOMER_ACTORS, ids=lambda a: a.kind)
def test_a_customer_actor_is_refused(
    module: str, name: str, actor: Actor, session: Session
) -> None:
    function = _function(module, name)
    assert getattr(function, ISP_ONLY_MARK, None), f"{module}.{name} is not marked isp_only"
    # No other arguments: the refusal comes before the function looks at anything.
    with pytest.raises(PermissionDeniedError, match="only the ISP can"):
        function(session, actor=actor)
    assert session.query(AuditEntry).count() == 0


def test_every_marked_function_is_in_the_table() -> None:
    marked = set()
    for info in pkgutil.iter_modules(app.services.__path__):
        module = importlib.import_module(f"app.services.{info.name}")
        for attr, value in vars(module).items():
            if getattr(value, ISP_ONLY_MARK, None) and value.__module__ == module.__name__:
                marked.add((info.name, attr))
    assert marked == set(ROWS)


def test_isp_actors_pass_the_mark(session: Session) -> None:
    from app.services import accounts, customers

    isp = Actor("operator", "alice", "127.0.0.1")
    assert accounts.list_operators(session, actor=isp) == []
    assert customers.list_customers(session, actor=isp) == []
    assert customers.list_customers(session) == []  # internal callers: no actor
