"""The streaming parser of formats whose calls sit between an open and a close tag.

Gemma 3 (```tool_code ... ```), Gemma 4 (``<|tool_call>...<tool_call|>``) and Qwen3-Coder
(``<tool_call>...</tool_call>``) differ only in their tags and in how a block's body reads; this
keeps the contract of ``rkllmd.toolcalls.format.CallParser`` once for them: text outside blocks
streams at once except a suffix that could still become an open tag; a block is held whole until
it closes; a body that does not read as calls, a block opened again before it closed, or one the
output ends inside is withheld, its reason recorded and logged. A helper module (its name starts
with ``_``), not a format. Thread: whichever feeds the parser (the token sink's); one per generation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rkllmd.toolcalls.format import held_suffix, withhold

if TYPE_CHECKING:
    from rkllmd.generation import ToolCall

#: a block's body (between its tags) to its calls; ValueError saying why it is not calls
ReadBody = Callable[[str], "list[ToolCall]"]


@dataclass
class TaggedParser:
    """Feed text deltas; get back the text outside call blocks, as early as it is safe to emit."""

    opens: tuple[str, ...]
    close: str
    read: ReadBody
    calls: list[ToolCall] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _buf: str = ""
    _open: str = ""  # the tag of the block being read, "" outside one

    def feed(self, delta: str) -> str:
        """Take one delta; return the text that is certainly outside any call."""
        self._buf += delta
        return self._step(final=False)

    def finish(self) -> str:
        """The end of the output: held text that is not a call comes out; a block still open is
        withheld and recorded."""
        out = self._step(final=True)
        rest, self._buf = self._buf, ""
        if self._open:
            self._bad(rest, "unterminated: the output ended inside it")
            self._open = ""
            return out
        return out + rest

    def _step(self, final: bool) -> str:
        out: list[str] = []
        while True:
            if not self._open:
                i, tag = _first(self._buf, self.opens, 0)
                if i < 0:
                    hold = 0 if final else held_suffix(self._buf, self.opens)
                    cut = len(self._buf) - hold
                    out.append(self._buf[:cut])
                    self._buf = self._buf[cut:]
                    return "".join(out)
                out.append(self._buf[:i])
                self._buf, self._open = self._buf[i:], tag
            start = len(self._open)
            j = self._buf.find(self.close, start)
            k, _ = _first(self._buf, self.opens, start)
            if k >= 0 and (j < 0 or k <= j):
                # opened again before this block closed (a fence that is also a close counts)
                self._bad(self._buf[:k], f"a new {self._open} began before this one was closed")
                self._buf, self._open = self._buf[k:], ""
                continue
            if j < 0:
                return "".join(out)
            if not final and any(t.startswith(self._buf[j:]) for t in self.opens):
                return "".join(out)  # the close may yet be the start of a new open tag: wait
            body = self._buf[start:j]
            block = self._buf[: j + len(self.close)]
            self._buf, self._open = self._buf[j + len(self.close) :], ""
            try:
                self.calls += self.read(body)
            except ValueError as e:
                self._bad(block, f"not a call: {e}")

    def _bad(self, block: str, why: str) -> None:
        withhold(self.problems, why, block)


def _first(text: str, tags: tuple[str, ...], start: int) -> tuple[int, str]:
    """The earliest of ``tags`` in ``text`` from ``start``: its index and the tag, or (-1, "")."""
    best, found = -1, ""
    for tag in tags:
        i = text.find(tag, start)
        if i >= 0 and (best < 0 or i < best):
            best, found = i, tag
    return best, found


def text_until(rule: str, end: str) -> str:
    """GBNF rules ``<rule>-0`` ... of any text that does not contain ``end`` (a grammar has no
    "anything but this string", so the rules are the states of matching it: ``<rule>-K`` has just
    read ``end``'s first K characters). ``end``'s first character must not recur in it."""
    assert end and end[0] not in end[1:]

    def cls(ch: str) -> str:
        return "".join("\\" + c if c in "]\\^-" else c for c in dict.fromkeys(ch))

    first = json.dumps(end[0])
    lines = []
    for k in range(len(end)):
        step = f" | {json.dumps(end[k])} {rule}-{k + 1}" if 0 < k < len(end) - 1 else ""
        if k == 0:
            lines.append(f'{rule}-0 ::= [^{cls(end[0])}] {rule}-0 | {first} {rule}-1 | ""')
        elif k == len(end) - 1:
            lines.append(f'{rule}-{k} ::= [^{cls(end[k] + end[0])}] {rule}-0 | {first} {rule}-1 | ""')
        else:
            lines.append(f'{rule}-{k} ::= [^{cls(end[k] + end[0])}] {rule}-0 | {first} {rule}-1{step} | ""')
    return "\n".join(lines) + "\n"
