"""RETR and TOP: read a message through the maildrop, encode it for the wire, write it.

Small messages are read and encoded in one go on the loop thread: a page-cached read of a
few KiB costs less than handing it to a thread.  Blocks of large messages are read on the
loop thread only when the kernel can serve them from the page cache without waiting
(``MessageReader.read_cached_at``), otherwise in a worker thread (bench/pop3_download.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from app.maildir import MaildirError
from app.maildir_files import MessageReader
from pop3_service.connection import FLUSH_THRESHOLD, Pop3Connection
from pop3_service.encoding import BLOCK_SIZE, WireEncoder, encode_whole, iter_top
from pop3_service.maildrop import MaildirMaildrop
from pop3_service.session import SendMessage

# Messages up to this wire size are read and encoded in one go on the loop thread.
SMALL_MESSAGE = 128 * 1024


async def send_message(
    conn: Pop3Connection, maildrop: MaildirMaildrop, event: SendMessage, *, timeout: float
) -> bool:
    """Carry out one SendMessage event: status line, message, terminating dot line.  False
    when the message could not be opened (``unavailable`` was sent instead)."""
    listing = maildrop.messages.listing
    index = event.index
    crlf_source = listing.foreign(index)
    if event.body_lines is None and listing.wires[index] <= SMALL_MESSAGE:
        try:
            data = maildrop.read_whole(index)
        except (OSError, MaildirError):
            conn.queue(event.unavailable)
            return False
        conn.queue(event.status)
        conn.queue(encode_whole(data, crlf_source=crlf_source))
        if conn.queued >= FLUSH_THRESHOLD:
            await conn.flush(timeout)
        return True
    try:
        reader = await asyncio.to_thread(maildrop.open, index)
    except (OSError, MaildirError):
        conn.queue(event.unavailable)
        return False
    loop = asyncio.get_running_loop()
    pending: asyncio.Future[bytes | None] | None = None
    try:
        conn.queue(event.status)
        await conn.flush(timeout)
        if event.body_lines is None:
            await _stream_retr(conn, reader, crlf_source=crlf_source, timeout=timeout)
        else:
            # TOP is line-oriented and rare: read and encode in the thread.
            chunks: Iterator[bytes] = iter_top(reader, event.body_lines, crlf_source=crlf_source)
            pending = loop.run_in_executor(None, next, chunks, None)
            while True:
                chunk = await pending
                pending = None
                if chunk is None:
                    break
                pending = loop.run_in_executor(None, next, chunks, None)
                conn.write(chunk)
                await conn.drain(timeout)
                if conn.closed:
                    raise ConnectionError("client went away during TOP")
    finally:
        if pending is not None:
            with contextlib.suppress(Exception):
                await pending
        reader.close()
    return True


async def _stream_retr(
    conn: Pop3Connection, reader: MessageReader, *, crlf_source: bool, timeout: float
) -> None:
    """RETR of a large message: read a block, encode it, write it, respect flow control.

    Blocks already in the page cache are read on the loop thread: a thread round trip per
    block costs more than the read and makes the reader and the encoder fight for the GIL.
    Blocks of 256 KiB stay in the CPU cache through the three passes of the encoder.
    """
    loop = asyncio.get_running_loop()
    encoder = WireEncoder(crlf_source=crlf_source)
    buffer = bytearray(BLOCK_SIZE)
    offset = 0
    pending: asyncio.Future[int] | None = None
    try:
        while True:
            n = reader.read_cached_at(buffer, offset)
            if n is None:
                pending = loop.run_in_executor(None, reader.read_at, buffer, offset)
                n = await pending
                pending = None
            if n == 0:
                break
            offset += n
            # The encoder never returns the buffer itself (every path makes new bytes),
            # so refilling it below cannot change what the transport still holds.
            conn.write(encoder.feed(buffer if n == BLOCK_SIZE else buffer[:n]))
            await conn.drain(timeout)
            if conn.closed:
                raise ConnectionError("client went away during RETR")
        conn.write(encoder.finish())
    finally:
        if pending is not None:
            # Cancelled mid-read: let the thread finish with the buffer and the fd first.
            with contextlib.suppress(Exception):
                await pending
