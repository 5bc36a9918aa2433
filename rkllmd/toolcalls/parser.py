"""An incremental parser for Hermes-style tool calls: ``<tool_call>{"name", "arguments"}</tool_call>``.

Qwen2.5/Qwen3 (through their chat templates) and RKLLM's function-calling runtime emit this
format. Thread: whichever thread feeds it (the token sink's); one parser per generation.

Call markup never comes out as text: everything from ``<tool_call>`` on is held while the call
is open; a well-formed block becomes a call, a malformed or unterminated one is dropped and
recorded in ``problems`` (the inference loop then answers ``invalid_output`` if no call came;
docs/TOOLS.md says why). Text outside calls is never lost, and only a suffix that could still
become ``<tool_call>`` is held back while streaming.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from rkllmd import finitejson, logface
from rkllmd.generation import ToolCall

log = logface.get_logger("rkllmd.toolcalls")

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


def new_call_id() -> str:
    """A fresh id in OpenAI's shape, ``call_<hex>``.

    ``os.urandom`` is what ``secrets.token_hex`` reads; importing secrets would map OpenSSL's
    libcrypto (through hmac) into the runtime worker process, which imports this package."""
    return "call_" + os.urandom(12).hex()


def _held_suffix(text: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of OPEN (could still become it)."""
    for k in range(min(len(OPEN) - 1, len(text)), 0, -1):
        if OPEN.startswith(text[-k:]):
            return k
    return 0


def _one_call(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = finitejson.loads(args, strict=False)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(new_call_id(), obj["name"], args)


def parse_calls(body: str) -> list[ToolCall] | None:
    """The calls inside one block: ``{"name": str, "arguments": object}``, or a JSON list of them
    (small models write several calls in one block so); None when the body is neither.

    Control characters inside strings are accepted (``strict=False``): llama.cpp's JSON grammar
    allows a raw newline in a string, and the call is no less clear for it. A number that is not
    finite (``1e999``) makes the call malformed: no reply could carry it back as JSON."""
    try:
        obj = finitejson.loads(body, strict=False)
    except ValueError:
        return None
    calls = [_one_call(x) for x in obj] if isinstance(obj, list) and obj else [_one_call(obj)]
    return None if any(c is None for c in calls) else [c for c in calls if c is not None]


@dataclass
class HermesParser:
    """Feed text deltas; get back the text outside calls, as early as it is safe to emit."""

    calls: list[ToolCall] = field(default_factory=list)
    #: why each dropped block was malformed ("not JSON ...", "unterminated"), in order
    problems: list[str] = field(default_factory=list)
    _buf: str = ""
    _in_call: bool = False

    @property
    def malformed(self) -> int:
        return len(self.problems)

    def feed(self, delta: str) -> str:
        """Take one delta; return the text that is certainly outside any call."""
        self._buf += delta
        out: list[str] = []
        while True:
            if not self._in_call:
                i = self._buf.find(OPEN)
                if i < 0:
                    hold = _held_suffix(self._buf)
                    out.append(self._buf[: len(self._buf) - hold])
                    self._buf = self._buf[len(self._buf) - hold :]
                    return "".join(out)
                out.append(self._buf[:i])
                self._buf = self._buf[i:]
                self._in_call = True
            j = self._buf.find(CLOSE)
            # A second opening tag before the close: the first call was abandoned mid-way.
            k = self._buf.find(OPEN, len(OPEN))
            if k >= 0 and (j < 0 or k < j):
                self._bad(self._buf[:k], "a new <tool_call> began before this one was closed")
                self._buf = self._buf[k:]
                continue
            if j < 0:
                return "".join(out)
            block = self._buf[: j + len(CLOSE)]
            self._buf = self._buf[j + len(CLOSE) :]
            self._in_call = False
            calls = parse_calls(block[len(OPEN) : -len(CLOSE)])
            if calls is None:
                self._bad(block, 'not a JSON object {"name": ..., "arguments": {...}}')
            else:
                self.calls += calls

    def finish(self) -> str:
        """The end of the output: held text that is not a call comes out; an unterminated call
        is dropped and recorded."""
        rest, self._buf = self._buf, ""
        if self._in_call:
            self._bad(rest, "unterminated: the output ended inside it")
            self._in_call = False
            return ""
        return rest

    def _bad(self, block: str, why: str) -> None:
        self.problems.append(why)
        log.warning("malformed tool call withheld", why=why, text=block[:200])
