"""Hermes tool calls: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.

Qwen2.5/Qwen3 (their chat templates say so), NousHermes, and RKLLM's function-calling runtime
write calls this way; tools are offered as JSON lines inside ``<tools>`` in the system prompt, and
results come back inside ``<tool_response>``. Also the format ``auto`` falls back to.

The parser holds everything from ``<tool_call>`` on while a call is open; a well-formed block
becomes calls, a malformed or unterminated one is withheld and recorded in ``problems``. Text
outside calls is never lost, and only a suffix that could still become ``<tool_call>`` is held
back while streaming. Thread: whichever feeds it (the token sink's); one parser per generation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rkllmd.toolcalls.calls import parse_calls
from rkllmd.toolcalls.format import (
    CallGrammar,
    ToGbnf,
    ToolFormat,
    Tools,
    held_suffix,
    tagged_json_grammar,
    withhold,
)
from rkllmd.toolcalls.schema import tool_call_schema

if TYPE_CHECKING:
    from rkllmd.generation import ChatMessage, ToolCall

OPEN = "<tool_call>"
CLOSE = "</tool_call>"

# Whitespace the grammar allows around the tags and between calls: what Hermes models write
# ("\n"), bounded so a model cannot pad a call with newlines until max_tokens.
_WS = "[ \\t\\n]{0,4}"

# Qwen2.5's own template wording, so a Qwen model reads what it was trained on.
_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


@dataclass
class HermesParser:
    """Feed text deltas; get back the text outside calls, as early as it is safe to emit."""

    calls: list[ToolCall] = field(default_factory=list)
    #: why each withheld block was malformed ("not JSON ...", "unterminated"), in order
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
                    hold = held_suffix(self._buf, (OPEN,))
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
        withhold(self.problems, why, block)


def system_block(tools: Tools) -> str:
    """The system-prompt section that offers ``tools`` (OpenAI-shaped) to a Hermes-style model."""
    lines = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
    return _HEAD + lines + _TAIL


def call_block(name: str, arguments: dict[str, Any]) -> str:
    """One call as the model writes it."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{OPEN}\n{body}\n{CLOSE}"


class Hermes(ToolFormat):
    name = "hermes"
    # Its tags also open other families' calls (Qwen3-Coder's XML): any more specific format ranks higher.
    priority = 0
    visible_tokens = (OPEN, CLOSE)

    def detect(self, chat_template: str | None, model_name: str) -> bool:
        return (chat_template is not None and OPEN in chat_template) or any(
            k in model_name for k in ("qwen", "hermes")
        )

    def parser(self, tools: Tools) -> HermesParser:
        return HermesParser()

    def render_tools(self, system: str | None, tools: Tools) -> str:
        block = system_block(tools)
        return f"{system}\n\n{block}" if system else block

    def render_call_turn(self, message: ChatMessage) -> str:
        blocks = [call_block(c.name, c.arguments) for c in message.tool_calls]
        return "\n".join([message.content, *blocks] if message.content else blocks)

    def render_tool_result(self, message: ChatMessage) -> str:
        return f"<tool_response>\n{message.content}\n</tool_response>"

    def grammar(self, tools: Tools, to_gbnf: ToGbnf, only: str | None = None) -> CallGrammar:
        return tagged_json_grammar(OPEN, CLOSE, tool_call_schema(tools, only), to_gbnf, _WS)


FORMAT = Hermes()
