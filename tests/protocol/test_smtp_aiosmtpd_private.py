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

from aiosmtpd.smtp import SMTP

import smtp_ingress

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
    missing = [name for name in SMTP_PRIVATE if name not in instance and name not in class_names]
    missing += [f"StreamReader.{name}" for name in READER_PRIVATE if name not in reader]
    assert not missing, f"aiosmtpd/asyncio private names gone: {missing}"
    assert isinstance(reader["_buffer"], bytearray)


def test_smtp_private_name_list_is_complete() -> None:
    instance, reader, class_names = _live_session()
    theirs = set(instance) | set(reader) | class_names
    ours: set[str] = set()
    source = Path(smtp_ingress.__file__).parent / "protocol.py"
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Attribute):
            ours.add(node.attr)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            ours.add(node.name)
    shared = {n for n in ours & theirs if n.startswith("_") and not n.startswith("__")}
    unlisted = shared - set(SMTP_PRIVATE) - set(READER_PRIVATE)
    assert not unlisted, f"list these aiosmtpd private names in SMTP_PRIVATE: {sorted(unlisted)}"
