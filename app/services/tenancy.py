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

ISP-only use cases (operators, DKIM, sending limits, scanning policy, the queue, relay
domains, customers and domain changes) refuse a customer actor here too, not only at the
edges (a customer may read its own relay domains' recipients: ``relay_recipients.list_recipients``
takes the actor like any lookup): ``isp_only`` marks such a service function, and a customer
actor gets ``PermissionDeniedError`` before anything is read or written (each edge maps it
once: 403 in the API, the portal's error page). The edges still keep their own doors shut
(the portal has no operator session for a customer administrator; the API gate is
deny-by-default), so the service check is the rule and the edge check a second lock.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

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


P = ParamSpec("P")
R = TypeVar("R")
ISP_ONLY_MARK = "__isp_only__"


def isp_only(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a service function (keyword ``actor``) as the ISP's only: a customer's actor
    (administrator or customer-bound token) gets ``PermissionDeniedError``."""

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def checked(*args: P.args, **kwargs: P.kwargs) -> R:
            actor = kwargs.get("actor")
            staff_only(actor if isinstance(actor, Actor) else None, what)
            return function(*args, **kwargs)

        setattr(checked, ISP_ONLY_MARK, what)
        return checked

    return decorate
