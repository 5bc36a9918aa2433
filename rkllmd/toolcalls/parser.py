"""An incremental parser for Hermes-style tool calls: ``<tool_call>{"name", "arguments"}</tool_call>``.

Qwen2.5/Qwen3 (through their chat templates) and RKLLM's function-calling runtime emit this
format. Thread: whichever thread feeds it (the token sink's); one parser per generation.
The parser never loses text: what is not a well-formed call comes back as text, and only a
suffix that could still become ``<tool_call>`` is held back while streaming.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import structlog

from rkllmd.runtime.base import ToolCall

log = structlog.get_logger("rkllmd.toolcalls")

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


def parse_call(body: str) -> ToolCall | None:
    """The call inside one block, or None when it is not ``{"name": str, "arguments": object}``."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(new_call_id(), obj["name"], args)


@dataclass
class HermesParser:
    """Feed text deltas; get back the text outside calls, as early as it is safe to emit."""

    calls: list[ToolCall] = field(default_factory=list)
    malformed: int = 0
    _buf: str = ""
    _in_call: bool = False

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
            if j < 0:
                return "".join(out)
            block = self._buf[: j + len(CLOSE)]
            self._buf = self._buf[j + len(CLOSE) :]
            self._in_call = False
            call = parse_call(block[len(OPEN) : -len(CLOSE)])
            if call is None:
                self._bad(block, "not a JSON object with a name and object arguments")
                out.append(block)
            else:
                self.calls.append(call)

    def finish(self) -> str:
        """The end of the output: whatever is still held back comes out as text (an unterminated
        call with a warning)."""
        rest, self._buf = self._buf, ""
        if self._in_call:
            self._bad(rest, "unterminated")
            self._in_call = False
        return rest

    def _bad(self, block: str, why: str) -> None:
        self.malformed += 1
        log.warning("malformed tool call returned as text", why=why, text=block[:200])
