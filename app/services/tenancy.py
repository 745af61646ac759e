"""Tenant isolation, in one place: what an actor may see of which customer.

Theory of operation: an ``Actor`` with a ``customer_id`` is a customer's own administrator.
Every service lookup by id or by name (``get_mailbox``, ``get_domain``, ``get_alias``,
``get_customer`` and the by-address forms) takes the acting ``actor`` and calls
``check_visible`` with the customer the row belongs to; a row of another customer raises the
same ``NotFoundError`` as a row that does not exist, so the answer (404 at every edge) never
confirms that a foreign id exists. Services that change an object receive the actor anyway
(for the audit log) and pass it to their lookups, so a change through any door is checked
here too. Lists take the customer as a filter (``customer_scope`` gives it). ISP staff,
platform tokens, the CLI and the system have no ``customer_id`` and see everything.
"""

from __future__ import annotations

from app.errors import NotFoundError, PermissionDeniedError
from app.services.audit import Actor

ACTOR_CUSTOMER_ADMIN = "customer_admin"


def visible(actor: Actor | None, customer_id: int) -> bool:
    """May ``actor`` see an object of ``customer_id``? (None: an internal call, no actor.)"""
    return actor is None or actor.customer_id is None or actor.customer_id == customer_id


def check_visible(actor: Actor | None, customer_id: int, *, message: str, field: str) -> None:
    """Raise the lookup's own "not found" for another customer's object."""
    if not visible(actor, customer_id):
        raise NotFoundError(message, field=field)


def customer_scope(actor: Actor | None, requested: int | None = None) -> int | None:
    """The customer filter of a list or search for ``actor``: a customer administrator always
    gets their own customer, whatever was asked for (asking for another one finds nothing)."""
    if actor is None or actor.customer_id is None:
        return requested
    if requested is not None and requested != actor.customer_id:
        raise NotFoundError(f"no customer with id {requested}", field="customer_id")
    return actor.customer_id


def staff_only(actor: Actor | None, what: str) -> None:
    """Refuse ISP-only changes (domains, prices, limits, the customer) to customer admins."""
    if actor is not None and actor.customer_id is not None:
        raise PermissionDeniedError(f"only the ISP can {what}")
