"""Business rules as plain, typed, keyword-only functions over a SQLAlchemy Session.

Services never commit (the edge owns the transaction), never raise HTTP or protocol errors,
and raise only the errors of ``app.errors``. Every mutating function takes an ``actor`` and
writes the audit log (and, for mailboxes and domains, a lifecycle event) itself, so every door
(CLI, portal, API) is audited the same way.

Modules: ``addresses`` (the one parser of names and addresses), ``customers``, ``domains``,
``mailboxes``, ``aliases`` (provisioning with validation), ``resolution`` (RCPT address to
mailboxes, or why not), ``accounts`` (operators, API tokens, logins, throttling), ``audit``
(actors, audit log, lifecycle events), ``stats`` (daily counters), ``billing``, ``removal``
(the Maildirs a deletion frees, removed after the commit), ``mailbox_import`` (CSV import,
dry run or all-or-nothing), ``sessions`` (portal login sessions), ``common`` (shared checks).

Conventions: a failed call has written nothing the edge's rollback would not undo; checks run
before writes, and a unique-key race lost at flush time becomes the same ConflictError the
check would have raised. Errors carry ``field``, the input at fault. Passwords are hashed
last (the slow step), after every other check passed.
"""
