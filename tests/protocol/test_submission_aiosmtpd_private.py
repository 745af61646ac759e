"""The private names of aiosmtpd that ``smtp_submission`` relies on (aiosmtpd is pinned
``>=1.4.6,<1.5``): each is checked on a live stock ``SMTP`` session, and every private name the
protocol module uses must be listed here, so an upgrade that renames one fails in the tests."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

from aiosmtpd.smtp import SMTP

import smtp_submission

SMTP_PRIVATE = {
    "_tls_protocol": "read: None until STARTTLS completed (the 530 / 538 rules on 587)",
    "_create_envelope": "overridden: SubmissionEnvelope",
    "_smtp_methods": "wrapped by our command table (the stage of a protocol refusal)",
    "_call_handler_hook": "overridden: notes the MAIL/RCPT/DATA hook reply (tracked there)",
    "_timeout_cb": "overridden: the idle timer's 421 before aiosmtpd closes",
}
# Public-looking names our overrides depend on by contract with aiosmtpd's AUTH machinery.
SMTP_PUBLIC = ("challenge_auth", "auth_PLAIN", "auth_LOGIN", "AuthLoginUsernameChallenge")


def test_private_names_exist_on_a_live_session() -> None:
    async def probe() -> None:
        server = await asyncio.get_running_loop().create_server(
            lambda: SMTP(object()), host="127.0.0.1", port=0
        )
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.readline()).startswith(b"220")
        writer.close()
        server.close()

    asyncio.run(probe())
    stock = SMTP(object())
    for name in SMTP_PRIVATE:
        assert hasattr(stock, name), name
    assert stock._tls_protocol is None
    assert isinstance(stock._smtp_methods, dict) and "MAIL" in stock._smtp_methods
    for name in SMTP_PUBLIC:
        assert hasattr(SMTP, name), name


def test_every_private_name_used_is_listed() -> None:
    source = (Path(smtp_submission.__file__).parent / "protocol.py").read_text()
    tree = ast.parse(source)
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    methods = {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef)
    }
    used = {
        name
        for name in attributes | methods
        if name.startswith("_")
        and not name.startswith("__")
        and (hasattr(SMTP, name) or hasattr(SMTP(object()), name))
    }
    assert used <= set(SMTP_PRIVATE), used - set(SMTP_PRIVATE)
