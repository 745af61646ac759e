"""The API's entity routers, one module each, aggregated in ``web.api.main``.

Conventions (every module follows them): thin routers that validate with the schemas, call
the services inside one transaction (the edge owns it) and answer the Public schema; every
change is audited by the service with the token as actor. Scopes: ``read`` for GET,
``provisioning`` for everything that changes state; the outbound queue (``queue.py``) needs
``queue`` for reads and actions alike. Tenant isolation: the
``/customers/{customer_id}/...`` paths and the ``customer_id`` filters are applied in the
query itself; an object of another customer asked for under a customer's path is "not found"
(404, the same answer as for an id that does not exist).
"""
