"""The private names of aiosmtpd (and asyncio's StreamReader) that ``smtp_ingress`` relies on.

aiosmtpd is pinned (``>=1.4.6,<1.5`` in pyproject.toml) because ``IngressSMTP`` overrides or
reads some of its private names. This test lists every one of them and checks it on a live
stock ``SMTP`` session over a real socket, so an upgrade that renames one fails here, in the
test run, instead of in production. A second check keeps the list complete: every private
name the protocol module (the only one that subclasses or reaches into aiosmtpd) uses that
also exists in aiosmtpd must be listed here.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

import smtp_ingress
from smtp_ingress.prepared import PreparedSMTP

# name -> where aiosmtpd (or asyncio) defines it and what we do with it
SMTP_PRIVATE = {
    "_handle_client": "overridden: greeting delay and early-talker check",
    "_getaddr": "overridden: fast path for plain <local@domain>",
    "_reset_timeout": "overridden: one re-arming timer per connection",
    "_timeout_cb": "overridden: 421 before closing on timeout",
    "_timeout_handle": "read/written by our _reset_timeout",
    "_timeout_duration": "read by our _reset_timeout",
    "_create_envelope": "overridden: IngressEnvelope",
    "_call_handler_hook": "called by our smtp_DATA",
    "_set_post_data_state": "called by our smtp_DATA",
    "_smtp_methods": "wrapped by our command table (unknown verbs)",
    "_reader": "the StreamReader: DATA reads, pipelining checks",
    "_writer": "the StreamWriter: replies",
    # smtp_ingress/prepared.py repeats SMTP.__init__ without its per-connection introspection
    # and sets every attribute it sets (checked below against a stock session):
    "_cb_client_connected": "prepared.py: the StreamReaderProtocol callback",
    "_decode_data": "prepared.py: set as SMTP.__init__ does",
    "_tls_handshake_okay": "prepared.py: set as SMTP.__init__ does",
    "_tls_protocol": "prepared.py: set as SMTP.__init__ does",
    "_original_transport": "prepared.py: set as SMTP.__init__ does",
    "_handler_coroutine": "prepared.py: set as SMTP.__init__ does",
    "_auth_require_tls": "prepared.py: set as SMTP.__init__ does",
    "_proxy_timeout": "prepared.py: set as SMTP.__init__ does",
    "_authenticator": "prepared.py: set as SMTP.__init__ does",
    "_auth_callback": "prepared.py: set as SMTP.__init__ does",
    "_auth_required": "prepared.py: set as SMTP.__init__ does",
    "_auth_methods": "prepared.py: built from names found once per class",
    "_handle_hooks": "prepared.py: built from names found once per class",
    "_ehlo_hook_ver": "prepared.py: found once per handler class",
    "_enforce_call_limit": "prepared.py: set as SMTP.__init__ does",
    "_call_limit_base": "prepared.py: set as SMTP.__init__ does (with a call limit)",
    "_call_limit_default": "prepared.py: set as SMTP.__init__ does (with a call limit)",
}
READER_PRIVATE = {
    "_buffer": "StreamReader's bytearray: pipelined input, input after DATA put back",
}


def _live_session() -> tuple[dict[str, object], dict[str, object], set[str]]:
    """Instance attributes of a stock SMTP session and its reader after a real greeting,
    and the class attributes of SMTP."""

    async def scenario() -> tuple[dict[str, object], dict[str, object]]:
        made: list[SMTP] = []

        def factory() -> SMTP:
            made.append(SMTP(object(), hostname="mx.test.example"))
            return made[0]

        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        greeting = await asyncio.wait_for(reader.readline(), 10)
        assert greeting.startswith(b"220 mx.test.example")
        session = made[0]
        found = (dict(vars(session)), dict(vars(session._reader)))
        writer.write(b"QUIT\r\n")
        await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        server.close()
        await server.wait_closed()
        return found

    instance, reader = asyncio.run(scenario())
    return instance, reader, set(dir(SMTP))


def test_smtp_private_names_we_rely_on_exist() -> None:
    instance, reader, class_names = _live_session()
    # Names set only with a call limit are checked by test_prepared_smtp_sets_what_smtp_init_sets.
    missing = [
        name
        for name, why in SMTP_PRIVATE.items()
        if name not in instance and name not in class_names and "with a call limit" not in why
    ]
    missing += [f"StreamReader.{name}" for name in READER_PRIVATE if name not in reader]
    assert not missing, f"aiosmtpd/asyncio private names gone: {missing}"
    assert isinstance(reader["_buffer"], bytearray)


def test_smtp_private_name_list_is_complete() -> None:
    instance, reader, class_names = _live_session()
    theirs = set(instance) | set(reader) | class_names
    ours: set[str] = set()
    for module in ("protocol.py", "prepared.py"):
        source = Path(smtp_ingress.__file__).parent / module
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Attribute):
                ours.add(node.attr)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                ours.add(node.name)
    shared = {n for n in ours & theirs if n.startswith("_") and not n.startswith("__")}
    unlisted = shared - set(SMTP_PRIVATE) - set(READER_PRIVATE)
    assert not unlisted, f"list these aiosmtpd private names in SMTP_PRIVATE: {sorted(unlisted)}"


class _Handler:
    """A handler with hooks (a 5-argument EHLO) and an AUTH mechanism of its own."""

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        return responses

    async def handle_RCPT(self, *args: Any) -> str:
        return "250 OK"

    async def auth_CRAM__MD5(self, server: Any, args: list[str]) -> Any:
        return None


def _stock_and_prepared(**kwargs: Any) -> tuple[SMTP, PreparedSMTP]:
    async def build() -> tuple[SMTP, PreparedSMTP]:
        loop = asyncio.get_running_loop()
        handler = _Handler()
        return (
            _StockExtra(handler, loop=loop, **kwargs),
            _PreparedExtra(handler, loop=loop, **kwargs),
        )

    return asyncio.run(build())


class _StockExtra(SMTP):
    async def smtp_XTEST(self, arg: str) -> None:
        await self.push("250 test")


class _PreparedExtra(PreparedSMTP):
    async def smtp_XTEST(self, arg: str) -> None:
        await self.push("250 test")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hostname": "mx.test.example"},
        {
            "hostname": "mx.test.example",
            "command_call_limit": 7,
            "auth_exclude_mechanism": ["LOGIN"],
        },
        {"hostname": "mx.test.example", "command_call_limit": {"*": 3, "NOOP": 9}, "timeout": 12.5},
    ],
)
def test_prepared_smtp_sets_what_smtp_init_sets(kwargs: dict[str, Any]) -> None:
    stock, prepared = _stock_and_prepared(**kwargs)
    mine, theirs = vars(prepared), vars(stock)
    assert set(mine) == set(theirs)
    tables = ("_smtp_methods", "_handle_hooks")
    for name in tables:
        assert {k: (v.__self__, v.__func__.__name__) for k, v in mine[name].items()} == {
            k: ((v.__self__ is stock and prepared) or v.__self__, v.__func__.__name__)
            for k, v in theirs[name].items()
        }, name
    assert "XTEST" in mine["_smtp_methods"] and "EHLO" in mine["_handle_hooks"]
    auth_mine = {k: (v.method.__func__, v.is_builtin) for k, v in mine["_auth_methods"].items()}
    auth_theirs = {k: (v.method.__func__, v.is_builtin) for k, v in theirs["_auth_methods"].items()}
    assert auth_mine == auth_theirs and "CRAM-MD5" in auth_mine
    plain = {
        n
        for n in theirs
        if n
        not in (
            *tables,
            "_auth_methods",
            "_loop",
            "_stream_reader_wr",
            "_stream_reader",
            "_strong_reader",
            "_drain_waiter",
            "_closed",
            "_task",
            "_over_ssl",
            "_client_connected_cb",
            "_reject_connection",
            "_source_traceback",
            "_paused",
            "_connection_lost",
            "_drain_waiters",
            "loop",
            "event_handler",
        )
    }
    for name in plain:
        assert mine[name] == theirs[name], name
