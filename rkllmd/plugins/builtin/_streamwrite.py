"""A streamed answer's token events, written to the client's socket by the thread the tokens
arrive on (rkllmd's inference thread), not by the HTTP server's event loop.

Why: handing each token to the event loop costs its thread a wake-up (the loop's self-pipe, then
the GIL) per token, which made an HTTP token cost a third more CPU than an MQTT one, whose chunk
the inference thread writes to the broker itself (docs/ARCHITECTURE.md, "One exception, for
cost"). Here the inference thread does the same for an HTTP stream: one non-blocking ``write()``
of the event, in the stream's chunked framing, and the event loop sleeps until the final reply.

The event loop still owns the connection: it reads it (a client that leaves is seen at once),
writes the status line, the first events and everything after the last token, and applies every
deadline. A :class:`StreamWriter` writes only between an endpoint's :meth:`Waiter.direct
<rkllmd.plugins.builtin._relay.Waiter.direct>` and the final reply, while the endpoint writes
nothing, and only while the transport holds nothing unsent: otherwise it refuses (``False``) and
the relay hands the event to the loop as before, so the order is kept and a slow reader still
fills the transport's buffer and meets ``read_timeout_s``. A write that the socket takes only in
part hands the rest to the loop, which then writes the rest of the stream. The socket is closed
by the loop only after the transport's ``connection_lost``, which closes this writer first
(under its lock): no write can reach a closed, perhaps reused, file descriptor.

Threads: :meth:`StreamWriter.write` on whichever thread routes the tokens (it never blocks);
:meth:`StreamWriter.close` on the server thread. Nothing here imports aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from collections.abc import Callable
from typing import Any

# a token's piece (a text delta, a piece of thought) -> its whole event (an SSE event, an NDJSON
# line); b"" when the stream has no place for it
Format = Callable[[Any], bytes]

_MARK = "\x00rkllmd-hole-{}\x00"  # stands for a value; nothing else in an event (ids, names) has it


def template(obj: Any, *holes: str) -> list[bytes]:
    """``obj`` as the compact JSON an endpoint writes, cut where each of ``holes`` (keys or
    string values set to :func:`hole` markers) stands: the pieces around each hole's JSON
    string, so that a token's event is pieces and encoded strings joined, not a dict dumped."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    pieces: list[bytes] = []
    for name in holes:
        before, found, text = text.partition(json.dumps(hole(name)))
        if not found:
            raise ValueError(f"no hole {name!r} in the template")
        pieces.append(before.encode())
    pieces.append(text.encode())
    return pieces


def hole(name: str) -> str:
    """The marker :func:`template` cuts at."""
    return _MARK.format(name)


def string(value: str) -> bytes:
    """A JSON string as :func:`template`'s pieces expect it (as json.dumps writes it in place)."""
    return json.dumps(value, ensure_ascii=False).encode()


class StreamWriter:
    """Token events of one chunked response, written from the thread they arrive on."""

    OPEN, BEHIND, CLOSED = "open", "behind", "closed"

    def __init__(self, transport: asyncio.Transport, fd: int, fmt: Format, on_error: Callable[[], None]):
        """Server thread. ``on_error`` (called on the server thread) closes the connection after
        a write failed: the client is gone."""
        self._transport, self._fd, self._fmt, self._on_error = transport, fd, fmt, on_error
        self._loop = asyncio.get_running_loop()
        self._lock = threading.Lock()
        self.state = self.OPEN

    def write(self, delta: Any) -> bool:
        """Any thread: write ``delta``'s event; False when the event loop must write it instead
        (the transport holds unsent bytes, or a write before this one was taken only in part).
        True once written, or dropped because the client is gone (or its event is empty)."""
        try:
            body = self._fmt(delta)
        except ValueError:  # e.g. a lone surrogate: the endpoint meets it (and the rest) as ever
            with self._lock:
                self.state = self.BEHIND if self.state == self.OPEN else self.state
                return self.state == self.CLOSED
        if not body:  # no event (an empty chunk would end the chunked body)
            return True
        data = b"%x\r\n%b\r\n" % (len(body), body)  # a chunk of the chunked transfer encoding
        with self._lock:
            if self.state != self.OPEN:
                return self.state == self.CLOSED
            if self._transport.get_write_buffer_size():
                self.state = self.BEHIND
                return False
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:  # reset or broken pipe: the loop closes the connection, the relay cancels
                self.state = self.CLOSED
                self._soon(self._on_error)
                return True
            if sent < len(data):  # the socket's buffer is full: the loop writes the rest, and after it
                self.state = self.BEHIND
                self._soon(self._rest, data[sent:])
            return True

    def close(self) -> None:
        """Server thread (the connection is lost, before its socket is closed): no more writes."""
        with self._lock:
            self.state = self.CLOSED

    def _soon(self, fn: Callable[..., object], *args: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the plugin has stopped
            self._loop.call_soon_threadsafe(fn, *args)

    def _rest(self, data: bytes) -> None:  # server thread
        if not self._transport.is_closing():
            self._transport.write(data)
