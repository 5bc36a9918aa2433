"""Llama 3.x JSON tool calls: the whole answer is ``{"name": ..., "parameters": {...}}``.

Llama 3.1/3.2/3.3's chat templates ask for one JSON object per call, written as the answer itself
(no tag), or after ``<|python_tag|>`` (a control token: llama.cpp streams it as text for this
format, see ``visible_tokens``). Several calls are separated by ``;`` (what vLLM's ``llama3_json``
parser reads too). Tools are offered with the template's own wording; results go back as the
``ipython`` role's text would.

A call is only recognised where the output starts with one (after whitespace) or after the
python tag: ``{`` later in a sentence is text. While the start could still become ``{"name"``
it is held; once it is (or the tag came), everything to the end is held and parsed at
``finish``; any other start streams as text at once. Thread: whichever feeds the parser (the
token sink's); one parser per generation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rkllmd import finitejson
from rkllmd.toolcalls.calls import one_call
from rkllmd.toolcalls.format import CallGrammar, ToGbnf, ToolFormat, Tools, held_suffix, withhold
from rkllmd.toolcalls.schema import tool_call_schema

if TYPE_CHECKING:
    from rkllmd.generation import ChatMessage, ToolCall

PYTHON_TAG = "<|python_tag|>"
_CALL_START = re.compile(r'\{\s*"name"')  # the start of a call object, whitespace as JSON allows
_MAYBE_START = re.compile(r'\{\s*(?:"(?:n(?:a(?:m(?:e)?)?)?)?)?')  # could still become one
_WS = "[ \\t\\n]{0,4}"
# Llama 3.1's own template wording, so the model reads what it was trained on.
_HEAD = (
    "Given the following functions, please respond with a JSON for a function call with its proper "
    "arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
    "value}.Do not use variables.\n\n"
)
_TEMPLATE_MARKS = (PYTHON_TAG, "Environment: ipython", '"parameters": ')


def split_calls(body: str) -> tuple[list[ToolCall], str, bool]:
    """The call objects at the start of ``body`` (separated by ``;`` or whitespace), what follows
    them, and whether every object read was a call. Stops at the first thing that is not JSON."""
    calls: list[ToolCall] = []
    pos, ok = 0, True
    decoder = json.JSONDecoder(strict=False)
    while True:
        while pos < len(body) and body[pos] in " \t\r\n;":
            pos += 1
        if pos >= len(body) or body[pos] != "{":
            return calls, body[pos:], ok
        try:
            obj, end = decoder.raw_decode(body, pos)
            finitejson.loads(body[pos:end], strict=False)  # a number no reply can carry is malformed
        except ValueError:
            return calls, body[pos:], ok
        call = one_call(obj)
        if call is None:
            return calls, body[pos:], False
        calls.append(call)
        pos = end


@dataclass
class Llama3Parser:
    """Feed text deltas; get back the text outside calls, as early as it is safe to emit."""

    calls: list[ToolCall] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _buf: str = ""
    _state: str = "start"  # start: nothing decided yet; text: prose; call: held to the end

    def feed(self, delta: str) -> str:
        """Take one delta; return the text that is certainly outside any call."""
        self._buf += delta
        if self._state == "start":
            head = self._buf.lstrip()
            if head.startswith(PYTHON_TAG) or _CALL_START.match(head):
                self._state = "call"
            elif not head or PYTHON_TAG.startswith(head) or _MAYBE_START.fullmatch(head):
                return ""  # whitespace, or the start of a call still possible
            else:
                self._state = "text"
        if self._state == "call":
            return ""
        i = self._buf.find(PYTHON_TAG)
        if i >= 0:
            out, self._buf, self._state = self._buf[:i], self._buf[i:], "call"
            return out
        hold = held_suffix(self._buf, (PYTHON_TAG,))
        out, self._buf = self._buf[: len(self._buf) - hold], self._buf[len(self._buf) - hold :]
        return out

    def finish(self) -> str:
        """The end of the output: the held call(s) are parsed; a start that never became a call
        is text; a call that does not parse is withheld and recorded."""
        rest, self._buf = self._buf, ""
        if self._state != "call":
            return rest
        body = rest.lstrip()
        body = body[len(PYTHON_TAG) :] if body.startswith(PYTHON_TAG) else body
        calls, after, ok = split_calls(body)
        self.calls += calls
        if not calls or not ok or after.lstrip().startswith("{"):
            why = (
                'not a JSON object {"name": ..., "parameters": {...}}'
                if ok
                else "a JSON object that is not a call"
            )
            withhold(self.problems, why, rest)
            return ""
        return after


def call_json(call: ToolCall) -> str:
    return json.dumps({"name": call.name, "parameters": call.arguments}, ensure_ascii=False)


class Llama3Json(ToolFormat):
    name = "llama3_json"
    priority = 10  # its name check (llama-3) must win over Hermes's; its template marks are its own
    visible_tokens = (PYTHON_TAG,)

    def detect(self, chat_template: str | None, model_name: str) -> bool:
        if chat_template:
            return "<|start_header_id|>" in chat_template and any(m in chat_template for m in _TEMPLATE_MARKS)
        return re.search(r"llama[-_ .]?3", model_name) is not None

    def parser(self, tools: Tools) -> Llama3Parser:
        return Llama3Parser()

    def render_tools(self, system: str | None, tools: Tools) -> str:
        block = _HEAD + "".join(json.dumps(t, indent=4, ensure_ascii=False) + "\n\n" for t in tools)
        return f"{system}\n\n{block}" if system else block

    def render_call_turn(self, message: ChatMessage) -> str:
        calls = "; ".join(call_json(c) for c in message.tool_calls)
        # Calls follow text only after the python tag: a bare "{" after words is text.
        return f"{message.content}{PYTHON_TAG}{calls}" if message.content else calls

    def render_tool_result(self, message: ChatMessage) -> str:
        # The ipython turn's text, said to be a result where it must sit in a user turn.
        head = f"Result of {message.name}" if message.name else "Result"
        return f"{head}: {message.content}"

    def grammar(self, tools: Tools, to_gbnf: ToGbnf, only: str | None = None) -> CallGrammar:
        """Calls as the whole output: one object, or several joined by ``;``. The lazy trigger is
        the start of the output opening an object (whitespace, ``{``, part of ``"name"``), which
        the converter's object rule accepts; later ``{`` in prose never triggers."""
        body = re.sub(
            r"^root ::=",
            "tool-call ::=",
            to_gbnf(tool_call_schema(tools, only, "parameters")),
            count=1,
            flags=re.M,
        )
        rules = f'root ::= tool-call (tool-ws ";" tool-ws tool-call)* tool-ws\ntool-ws ::= {_WS}\n'
        trigger = f'^{_WS}(\\{{)(?:"(?:n(?:a(?:m(?:e"?)?)?)?)?)?$'
        return CallGrammar(rules + body, (trigger,))


FORMAT = Llama3Json()
