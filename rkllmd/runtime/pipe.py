"""The worker pipe: the frames between the daemon (rkllmd.runtime.worker) and its runtime worker
(rkllmd.runtime._child), and the calls they carry.

A frame is a kind byte, a 4-byte little-endian length and the payload. Parent to child, on the
command pipe, ``K_CMD`` frames, each a pickled tuple: first the opening (how to build the
runtime), then any number of calls, ``(CALL, method, args, kwargs)``, then ``(CLOSE,)``. A call
names a method of the :class:`~rkllmd.runtime.base.Runtime` interface marked
:func:`~rkllmd.runtime.base.served`; the worker refuses any other name. An argument that is
``Arg.SINK`` stands for a token sink: the worker passes its own (:meth:`Outbox.add`), whose tokens
come back as ``K_TOKENS`` frames before the reply. So a method added to the interface is one
more call, never a new frame.

Child to parent, on the event pipe: ``K_TOKENS`` (the UTF-8 text of one or more tokens),
``K_REPLY`` (a pickled reply to the last command: ``("ok", value)``, or ``("error", class name,
message, data)``) and ``K_LOG`` (a log record). A third pipe carries one byte per abort.

Threads: whoever holds a :class:`FrameReader` reads with it (one thread); :class:`Outbox` says
which of its methods run where.
"""

from __future__ import annotations

import enum
import os
import pickle
import select
import struct
import threading
from typing import Any

K_CMD = b"C"
K_TOKENS = b"T"
K_REPLY = b"R"
K_LOG = b"L"
_HEAD = struct.Struct("<cI")

CALL = "call"  # (CALL, method name, args, kwargs): call a served method of the runtime
CLOSE = "close"  # (CLOSE,): close the runtime and exit


class Arg(enum.Enum):
    """Stand-ins for arguments that cannot cross the pipe."""

    SINK = "sink"  # the worker's token sink goes here; its tokens come back as K_TOKENS frames


def write_frame(fd: int, kind: bytes, payload: bytes) -> None:
    """One whole frame to a blocking ``fd`` (the caller serialises writers)."""
    data = memoryview(_frame(kind, payload))
    while data:
        n = os.write(fd, data)
        data = data[n:]


class FrameReader:
    """Frames from a pipe, as many as one read() brings: a batch is parsed in one go."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._rest = bytearray()  # the start of a frame the reads so far did not finish
        self._need = 0  # how long _rest must grow before that frame is whole

    def read(self) -> list[tuple[bytes, bytes]]:
        """Block until at least one whole frame is in; [] at end of file."""
        frames: list[tuple[bytes, bytes]] = []
        while not frames:
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return []
            if self._rest:  # a frame longer than a read: gathered, not parsed again each read
                self._rest += chunk
                if len(self._rest) < self._need:
                    continue
                chunk, self._rest = bytes(self._rest), bytearray()
            frames = self._split(chunk)
        return frames

    def _split(self, data: bytes) -> list[tuple[bytes, bytes]]:
        pos, out, head = 0, [], _HEAD.size
        while len(data) - pos >= head:
            kind, size = _HEAD.unpack_from(data, pos)
            end = pos + head + size
            if end > len(data):
                break
            out.append((kind, data[pos + head : end]))
            pos = end
        if pos < len(data):
            self._rest = bytearray(data[pos:])
            left = len(data) - pos
            self._need = head + _HEAD.unpack_from(data, pos)[1] if left >= head else head
        return out


def tokens_payload(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def tokens_text(payload: bytes) -> str:
    """The text of a ``K_TOKENS`` frame."""
    return payload.decode("utf-8", "surrogatepass")


class Outbox:
    """Everything the worker sends to the parent, in order, through one non-blocking pipe end.

    A token (``add``, on the runtime's callback thread) is written at once while the pipe takes
    it: one write, so a token the parent can read is never lost to a crash that follows. When the
    parent falls behind and the pipe is full, the callback does not wait: the text is kept, and
    the *sender* thread writes all the tokens kept meanwhile as one frame once the pipe drains.
    Replies and log records (``send``, any other thread) wait until they and everything before
    them are written.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self._cond = threading.Condition(threading.Lock())
        self._unsent = bytearray()  # bytes of frames already made, not yet written
        self._texts: list[str] = []  # tokens not framed yet (the pipe was full)
        self._sender = threading.Thread(target=self._drain, name="worker-sender", daemon=True)
        self._sender.start()

    def add(self, text: str, token_id: int | None = None) -> None:
        """The token sink (the runtime's thread): write the token now, or keep it; never blocks."""
        with self._cond:
            if self._unsent or self._texts:
                self._texts.append(text)
                self._cond.notify_all()
                return
            self._write_locked(_frame(K_TOKENS, tokens_payload(text)))

    def send(self, kind: bytes, payload: bytes) -> None:
        """A whole frame after everything before it; blocks until the pipe has taken it."""
        with self._cond:
            self._frame_tokens_locked()
            if self._unsent:
                self._unsent += _frame(kind, payload)
                self._cond.notify_all()
            else:
                self._write_locked(_frame(kind, payload))
            while self._unsent:
                self._cond.wait()

    def reply(self, msg: tuple[Any, ...]) -> None:
        self.send(K_REPLY, pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))

    def _frame_tokens_locked(self) -> None:
        if self._texts:
            self._unsent += _frame(K_TOKENS, tokens_payload("".join(self._texts)))
            self._texts = []

    def _write_locked(self, data: bytes | bytearray) -> None:
        """Write what the pipe takes now; keep the rest for the sender thread."""
        try:
            n = os.write(self.fd, data)
        except BlockingIOError:
            n = 0
        except BrokenPipeError:  # the parent is gone (say it stopped while the model loaded)
            os._exit(0)  # as the control thread does on its end of file: nothing left to serve
        if n < len(data):
            self._unsent += data[n:]
            self._cond.notify_all()

    def _drain(self) -> None:
        """The sender thread: whenever something is kept, wait for room in the pipe and write it."""
        while True:
            with self._cond:
                while not (self._unsent or self._texts):
                    self._cond.wait()
            select.select([], [self.fd], [])
            with self._cond:
                self._frame_tokens_locked()
                data, self._unsent = self._unsent, bytearray()
                self._write_locked(data)
                self._cond.notify_all()


def _frame(kind: bytes, payload: bytes) -> bytes:
    return _HEAD.pack(kind, len(payload)) + payload
