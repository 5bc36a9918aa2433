"""Phi-4-mini tool calls: ``functools[{"name": "f", "arguments": {...}}, ...]``.

Phi-4-mini-instruct's chat template puts the tools in the system message between its ``<|tool|>``
and ``<|/tool|>`` tokens (the model card: a JSON list of ``{"name", "description",
"parameters"}``); the model answers a call with the word ``functools`` followed by one JSON list of
calls, no closing marker (what vLLM's ``phi4_mini_json`` parser reads). ``functools`` is plain
text, not a control token, so only ``functools[`` as a word of its own opens calls: the word in
prose ("Python's functools module", ``my_functools[0]``) is text.

Text before ``functools[`` streams at once (only a suffix that could still become it is held);
from there everything is held and parsed at the end of the output; text after a well-formed list
comes out then. Results go back after ``<|tool_response|>`` (a token of Phi-4-mini's vocabulary;
the template itself has no tool role). Thread: whichever feeds the parser (the token sink's); one
parser per generation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rkllmd import finitejson
from rkllmd.toolcalls.calls import one_call
from rkllmd.toolcalls.format import (
    CallGrammar,
    ToGbnf,
    ToolFormat,
    Tools,
    ecma_escape,
    held_suffix,
    optional_prefixes,
    withhold,
)
from rkllmd.toolcalls.schema import tool_call_schema

if TYPE_CHECKING:
    from rkllmd.generation import ChatMessage, ToolCall

WORD = "functools"
OPEN = WORD + "["  # what opens calls: the word and the list's bracket
_OPEN = re.compile(r"(?<![A-Za-z0-9_])functools\[")  # ... as a word of its own (not my_functools[0])
_WS = "[ \\t\\n]{0,4}"
_OBJECT_START = optional_prefixes('{"')  # what the list's first call certainly begins with
_TEMPLATE_MARKS = ("<|tool|>", "<|/tool|>")


def split_list(body: str) -> tuple[list[ToolCall] | None, str]:
    """The calls of the JSON list at the start of ``body`` (``[...]``) and the text after it;
    None when it is not a list of call objects (or holds a number no reply can carry)."""
    try:
        value, end = json.JSONDecoder(strict=False).raw_decode(body)
        finitejson.loads(body[:end], strict=False)
    except (ValueError, RecursionError):
        return None, ""
    if not isinstance(value, list) or not value:
        return None, ""
    calls = [one_call(x) for x in value]
    if any(c is None for c in calls):
        return None, ""
    return [c for c in calls if c is not None], body[end:]


@dataclass
class Phi4MiniParser:
    """Feed text deltas; get back the text outside calls, as early as it is safe to emit."""

    calls: list[ToolCall] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _buf: str = ""
    _in_call: bool = False
    _last: str = ""  # the last character let out

    def feed(self, delta: str) -> str:
        """Take one delta; return the text that is certainly outside any call."""
        self._buf += delta
        if self._in_call:
            return ""
        # The last character let out goes in front, so the marker's word boundary is seen
        # across deltas (``my_`` out, then ``functools[``).
        m = _OPEN.search(self._last + self._buf)
        i = len(self._buf) - held_suffix(self._buf, (OPEN,)) if m is None else m.start() - len(self._last)
        out, self._buf, self._in_call = self._buf[:i], self._buf[i:], m is not None
        self._last = (self._last + out)[-1:]
        return out

    def finish(self) -> str:
        """The end of the output: each ``functools[...]`` is parsed; text between and after the
        lists is text; a list that is not calls is withheld and recorded."""
        rest, self._buf = self._buf, ""
        if not self._in_call:
            return rest
        self._in_call = False
        text: list[str] = []
        while rest:
            m = _OPEN.search(rest)
            if m is None:
                text.append(rest)
                break
            i = m.start()
            text.append(rest[:i])
            calls, after = split_list(rest[i + len(WORD) :])
            if calls is None:
                why = 'not a JSON list [{"name": ..., "arguments": {...}}, ...]'
                withhold(self.problems, why, rest[i:])
                break
            self.calls += calls
            rest = after
        return "".join(text) if self.calls else ""


def call_list(calls: tuple[ToolCall, ...]) -> str:
    items = [{"name": c.name, "arguments": c.arguments} for c in calls]
    return WORD + json.dumps(items, ensure_ascii=False)


class Phi4Mini(ToolFormat):
    name = "phi4_mini"
    priority = 10  # its name check must win over Hermes's; its template marks are its own

    def detect(self, chat_template: str | None, model_name: str) -> bool:
        if chat_template:
            return all(m in chat_template for m in _TEMPLATE_MARKS)
        return re.search(r"phi[-_ ]?4[-_ ]?mini", model_name) is not None

    def parser(self, tools: Tools) -> Phi4MiniParser:
        return Phi4MiniParser()

    def render_tools(self, system: str | None, tools: Tools) -> str:
        fns: list[Any] = [t["function"] for t in tools]
        block = f"<|tool|>{json.dumps(fns, ensure_ascii=False)}<|/tool|>"
        return f"{system}{block}" if system else block

    def render_call_turn(self, message: ChatMessage) -> str:
        return message.content + call_list(message.tool_calls)

    def render_tool_result(self, message: ChatMessage) -> str:
        return f"<|tool_response|>{message.content}"

    def grammar(self, tools: Tools, to_gbnf: ToGbnf, only: str | None = None) -> CallGrammar:
        """``functools`` then, with nothing between (the parser reads only ``functools[``), a
        JSON list of calls of the offered tools; triggered once the list has begun: the word
        alone, in prose, never triggers."""
        schema = {"type": "array", "items": tool_call_schema(tools, only), "minItems": 1}
        body = re.sub(r"^root ::=", "tool-call-body ::=", to_gbnf(schema), count=1, flags=re.M)
        rules = (
            "root ::= tool-call (tool-ws tool-call)* tool-ws\n"
            f"tool-call ::= {json.dumps(WORD)} tool-call-body\n"
            f"tool-ws ::= {_WS}\n"
        )
        return CallGrammar(rules + body, (f"({ecma_escape(WORD)})\\[{_OBJECT_START}$",))


FORMAT = Phi4Mini()
