"""Business rules as plain, typed, keyword-only functions over a SQLAlchemy Session.

Services never commit (the edge owns the transaction), never raise HTTP or protocol errors,
and raise only the errors of ``app.errors``. Every mutating function takes an ``actor`` and
writes the audit log (and, for mailboxes and domains, a lifecycle event) itself, so every door
(CLI, portal, API) is audited the same way.
"""
