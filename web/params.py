"""Ids and search text in paths, queries and bodies: one range and one length for portal and API.

An entity id (customer, domain, mailbox, alias, operator, token) is a positive integer that
fits PostgreSQL's ``integer``, the narrower of the two databases (SQLite holds 64 bits); the
event feed and the audit log count in ``bigint``, a signed 64-bit integer. A value outside
its column's range cannot name a row, and handed to the database it fails there instead
(SQLite: ``OverflowError``; PostgreSQL: "integer out of range"; both were 500s), so it is
refused at the door: a 404 for an id in a path, a 422 for a query parameter or a body field.

Search text becomes a ``LIKE`` pattern; SQLite refuses patterns over 50,000 bytes ("LIKE or
GLOB pattern too complex"), and nobody searches for 200 characters, so that is the cap.
"""

from __future__ import annotations

from typing import Annotated

from annotated_types import Ge, Le
from pydantic import StrictInt, StringConstraints

ID_MIN = 1
ID_MAX = 2**31 - 1  # PostgreSQL integer: every entity table's primary key
BIG_ID_MAX = 2**63 - 1  # PostgreSQL bigint: lifecycle events, audit entries
SEARCH_MAX_LENGTH = 200

# Path and query parameters arrive as text: lax parsing ("42" -> 42), range checked.
Id = Annotated[int, Ge(ID_MIN), Le(ID_MAX)]
BigId = Annotated[int, Ge(ID_MIN), Le(BIG_ID_MAX)]
# JSON bodies: a JSON integer only; ``true``, ``1.5`` and ``"1"`` are refused (issue 10).
StrictId = Annotated[StrictInt, Ge(ID_MIN), Le(ID_MAX)]
SearchText = Annotated[str, StringConstraints(max_length=SEARCH_MAX_LENGTH)]


def is_id(text: str) -> bool:
    """Whether ``text`` (typed into a portal form) is an id in range."""
    return text.isascii() and text.isdigit() and ID_MIN <= int(text) <= ID_MAX
