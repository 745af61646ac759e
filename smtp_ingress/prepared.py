"""aiosmtpd's ``SMTP`` with its per-connection setup done once per class: ``PreparedSMTP``.

Theory of operation: ``SMTP.__init__`` (aiosmtpd 1.4) builds three lookup tables for every
new connection: the AUTH mechanisms (``inspect.getmembers`` over the protocol object and the
handler, which evaluates every attribute of both), the handler hooks (``dir(handler)``) and
the command table (``dir(self)``), inspects the EHLO hook's signature and logs the AUTH
mechanisms at INFO. With a new connection per message, which is what an MX mostly sees, that
was a quarter of the ingress process's time (issue 16's profile: 24.5 %, 14.7 % in
``inspect.getmembers`` alone). Only the names depend on the class; this module finds them
once per (protocol class, handler class) and binds them per connection with ``getattr``.

Everything else ``SMTP.__init__`` does is repeated here attribute for attribute (the test in
tests/protocol/test_smtp_aiosmtpd_private.py checks that a ``PreparedSMTP`` session has
exactly the instance attributes of a stock one, so an aiosmtpd upgrade that adds one fails
there). aiosmtpd is pinned ``<1.5`` for this reason.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl
import warnings
from collections.abc import Iterable
from typing import Any

from aiosmtpd.smtp import (
    CALL_LIMIT_DEFAULT,
    DATA_SIZE_DEFAULT,
    SMTP,
    AuthCallbackType,
    AuthenticatorType,
    _AuthMechAttr,
    login_always_fail,
)
from aiosmtpd.smtp import __ident__ as aiosmtpd_ident

log = logging.getLogger("smtp_ingress")


class _Names:
    """The names ``SMTP.__init__`` discovers by introspection, for one pair of classes."""

    def __init__(self, protocol_cls: type, handler: Any) -> None:
        # (mechanism, attribute name, defined on the protocol?) as aiosmtpd derives them;
        # getmembers on the class sees the same functions as on an instance.
        self.auth: list[tuple[str, str, bool]] = []
        for on_self, obj in ((True, protocol_cls), (False, handler)):
            for name, member in inspect.getmembers(obj):
                if name.startswith("auth_"):
                    mechanism = getattr(
                        member,
                        "__auth_mechanism_name__",
                        name.replace("auth_", "").replace("__", "-"),
                    )
                    self.auth.append((mechanism, name, on_self))
        self.hooks = [
            (m.replace("handle_", ""), m) for m in dir(handler) if m.startswith("handle_")
        ]
        self.commands = [
            (m.replace("smtp_", ""), m) for m in dir(protocol_cls) if m.startswith("smtp_")
        ]
        ehlo = getattr(handler, "handle_EHLO", None)
        self.ehlo_hook_ver: str | None = None
        if ehlo is not None:
            params = len(inspect.signature(ehlo).parameters)
            if params == 4:
                warnings.warn(
                    "Use the 5-argument handle_EHLO() hook instead of the 4-argument one",
                    DeprecationWarning,
                    stacklevel=3,
                )
                self.ehlo_hook_ver = "old"
            elif params == 5:
                self.ehlo_hook_ver = "new"
            else:
                raise RuntimeError("Unsupported EHLO Hook")


_NAMES: dict[tuple[type, type], _Names] = {}


class PreparedSMTP(SMTP):
    """``SMTP`` whose constructor does no introspection per connection (module docstring)."""

    def __init__(  # noqa: PLR0913 - aiosmtpd's own signature
        self,
        handler: Any,
        *,
        data_size_limit: int | None = DATA_SIZE_DEFAULT,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
        hostname: str | None = None,
        ident: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        timeout: float = 300,
        auth_required: bool = False,
        auth_require_tls: bool = True,
        auth_exclude_mechanism: Iterable[str] | None = None,
        auth_callback: AuthCallbackType | None = None,
        command_call_limit: int | dict[str, int] | None = None,
        authenticator: AuthenticatorType | None = None,
        proxy_protocol_timeout: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        key = (type(self), type(handler))
        names = _NAMES.get(key)
        if names is None:
            names = _NAMES[key] = _Names(type(self), handler)
            log.debug("AUTH mechanisms of %s: %s", key[0].__name__, [a[0] for a in names.auth])
        self.__ident__ = ident or aiosmtpd_ident
        if loop is None:
            raise ValueError("PreparedSMTP needs the serving loop")
        self.loop = loop
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(loop=loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=loop,
        )
        self.event_handler = handler
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = decode_data
        self.command_size_limits.clear()
        self.hostname = hostname or socket.getfqdn()
        self.tls_context = tls_context
        if tls_context is not None and tls_context.verify_mode not in {
            ssl.CERT_NONE,
            ssl.CERT_OPTIONAL,
        }:
            log.warning("tls_context.verify_mode not in {CERT_NONE, CERT_OPTIONAL}")
        self.require_starttls = tls_context and require_starttls  # as aiosmtpd: None without TLS
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = auth_require_tls
        if proxy_protocol_timeout is not None and proxy_protocol_timeout <= 0:
            raise ValueError("proxy_protocol_timeout must be > 0")
        self._proxy_timeout = proxy_protocol_timeout
        if authenticator is not None:
            self._authenticator = authenticator
            self._auth_callback = None
        else:
            self._auth_callback = auth_callback or login_always_fail
            self._authenticator = None
        self._auth_required = auth_required
        excluded = set(auth_exclude_mechanism or ())
        self._auth_methods = {
            mechanism: _AuthMechAttr(getattr(self if on_self else handler, name), on_self)
            for mechanism, name, on_self in names.auth
            if mechanism not in excluded
        }
        self._handle_hooks = {verb: getattr(handler, name) for verb, name in names.hooks}
        self._ehlo_hook_ver = names.ehlo_hook_ver
        self._smtp_methods = {verb: getattr(self, name) for verb, name in names.commands}
        if command_call_limit is None:
            self._enforce_call_limit = False
        else:
            self._enforce_call_limit = True
            if isinstance(command_call_limit, int):
                self._call_limit_base = {}
                self._call_limit_default = command_call_limit
            else:
                self._call_limit_base = command_call_limit
                self._call_limit_default = command_call_limit.get("*", CALL_LIMIT_DEFAULT)
