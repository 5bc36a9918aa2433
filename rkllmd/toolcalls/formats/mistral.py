"""Mistral tool calls: ``[TOOL_CALLS]`` then the calls, in either of Mistral's two forms.

- tokenizer v2/v3/v7 (Mistral 7B Instruct v0.3, Mixtral 8x22B, Nemo, Small 3.0/3.1, Ministral
  8B): one JSON list, ``[TOOL_CALLS][{"name": "f", "arguments": {...}, "id": "abcdefghi"}]``
  (v3's sentencepiece models write a space after the tag);
- v11 and later (Small 3.2, Magistral, Devstral): each call is its own
  ``[TOOL_CALLS]f[ARGS]{...}`` (v11 may put ``[CALL_ID]id`` before ``[ARGS]``).

mistral-common is the reference (its instruct tokenizers, v2 to v13). Tools are offered between
``[AVAILABLE_TOOLS]`` and ``[/AVAILABLE_TOOLS]`` as the JSON list of the request's tools; a result
goes back between ``[TOOL_RESULTS]`` and ``[/TOOL_RESULTS]`` as ``{"content": ..., "call_id":
...}`` with the call's id as Mistral's templates require it: 9 letters and digits. The tags are
control tokens: llama.cpp streams them as text for this format (``visible_tokens``); on RKLLM set
``skip_special_token = false``.

Text before the first ``[TOOL_CALLS]`` streams at once (only a suffix that could still become the
tag is held); from the tag on everything is held and parsed at the end of the output (Mistral ends
its turn after its calls); text after a well-formed call comes out then. Thread: whichever feeds
the parser (the token sink's); one parser per generation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rkllmd import finitejson
from rkllmd.toolcalls.calls import new_call_id, one_call
from rkllmd.toolcalls.format import (
    CallGrammar,
    ToGbnf,
    ToolFormat,
    Tools,
    ecma_escape,
    held_suffix,
    optional_prefixes,
    tagged_json_grammar,
    withhold,
)
from rkllmd.toolcalls.schema import tool_call_schema

if TYPE_CHECKING:
    from rkllmd.generation import ChatMessage, ToolCall

TAG = "[TOOL_CALLS]"
ARGS = "[ARGS]"
CALL_ID = "[CALL_ID]"
_WS = "[ \\t\\n]{0,4}"
_OBJECT_START = optional_prefixes('{"')  # what the list's first call certainly begins with
# v11+: the tool's name, an optional [CALL_ID]id, then [ARGS] (whitespace as the tokenizer may add).
_NAMED = re.compile(r"\s*([A-Za-z0-9_.:-]{1,64})\s*(?:\[CALL_ID\]\s*[A-Za-z0-9]{1,64}\s*)?\[ARGS\]\s*")
_ID_ALPHABET = re.compile(r"[^A-Za-z0-9]")


class Malformed(ValueError):
    """Why the text after a [TOOL_CALLS] is not calls (recorded in ``problems``)."""


def mistral_id(call_id: str | None) -> str:
    """A call's id as Mistral's templates require it, 9 letters and digits: the last 9 of its
    letters and digits (as Mistral Small 3.1's template takes ``id[-9:]``), zero-padded. The same
    id gives the same 9 characters, so a call and its result still match."""
    return ("0" * 9 + _ID_ALPHABET.sub("", call_id or ""))[-9:]


def _json_at(text: str, pos: int) -> tuple[Any, int]:
    """The JSON value starting at ``pos`` and where it ends; Malformed when there is none (or it
    holds a number no reply can carry)."""
    try:
        value, end = json.JSONDecoder(strict=False).raw_decode(text, pos)
        finitejson.loads(text[pos:end], strict=False)
    except (ValueError, RecursionError):
        raise Malformed("not JSON after the tag") from None
    return value, end


def parse_segment(seg: str) -> tuple[list[ToolCall], str]:
    """The calls of the text after one ``[TOOL_CALLS]`` and the text that follows them."""
    body = seg.lstrip()
    if body.startswith(("[", "{")):
        value, end = _json_at(body, 0)
        items = value if isinstance(value, list) else [value]
        calls = [one_call(x) for x in items]
        if not items or any(c is None for c in calls):
            raise Malformed('not a list of {"name": ..., "arguments": {...}}')
        return [c for c in calls if c is not None], body[end:]
    m = _NAMED.match(body)
    if m is None:
        raise Malformed("neither a JSON list of calls nor name[ARGS]{...}")
    args, end = _json_at(body, m.end())
    if isinstance(args, str):  # arguments written as a JSON string of the object
        try:
            args = finitejson.loads(args, strict=False)
        except (ValueError, RecursionError):
            raise Malformed("[ARGS] is not a JSON object") from None
    if not isinstance(args, dict):
        raise Malformed("[ARGS] is not a JSON object")
    from rkllmd.generation import ToolCall

    return [ToolCall(new_call_id(), m.group(1), args)], body[end:]


@dataclass
class MistralParser:
    """Feed text deltas; get back the text outside calls, as early as it is safe to emit."""

    calls: list[ToolCall] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _buf: str = ""
    _in_call: bool = False

    def feed(self, delta: str) -> str:
        """Take one delta; return the text that is certainly outside any call."""
        self._buf += delta
        if self._in_call:
            return ""
        i = self._buf.find(TAG)
        if i >= 0:
            out, self._buf, self._in_call = self._buf[:i], self._buf[i:], True
            return out
        hold = held_suffix(self._buf, (TAG,))
        out, self._buf = self._buf[: len(self._buf) - hold], self._buf[len(self._buf) - hold :]
        return out

    def finish(self) -> str:
        """The end of the output: each [TOOL_CALLS] part is parsed; what follows a call is text;
        a part that is not calls is withheld and recorded."""
        rest, self._buf = self._buf, ""
        if not self._in_call:
            return rest
        self._in_call = False
        after: list[str] = []
        for seg in rest.split(TAG)[1:]:
            try:
                calls, tail = parse_segment(seg)
            except Malformed as exc:
                withhold(self.problems, str(exc), TAG + seg)
                continue
            self.calls += calls
            after.append(tail)
        return "".join(after) if self.calls else ""


def call_list(calls: tuple[ToolCall, ...]) -> str:
    """Calls in the v3 form, each with its 9-character id, as Mistral's templates write them."""
    items = [{"name": c.name, "arguments": c.arguments, "id": mistral_id(c.id)} for c in calls]
    return TAG + json.dumps(items, ensure_ascii=False)


class Mistral(ToolFormat):
    name = "mistral"
    priority = 10  # its name check must win over Hermes's; its template marks are its own
    visible_tokens = (TAG, ARGS, CALL_ID)

    def detect(self, chat_template: str | None, model_name: str) -> bool:
        if chat_template:
            return TAG in chat_template
        return re.search(r"mi[sx]tral|ministral|magistral|devstral|codestral|pixtral", model_name) is not None

    def parser(self, tools: Tools) -> MistralParser:
        return MistralParser()

    def render_tools(self, system: str | None, tools: Tools) -> str:
        block = f"[AVAILABLE_TOOLS]{json.dumps(list(tools), ensure_ascii=False)}[/AVAILABLE_TOOLS]"
        return f"{system}\n\n{block}" if system else block

    def render_call_turn(self, message: ChatMessage) -> str:
        return message.content + call_list(message.tool_calls)

    def render_tool_result(self, message: ChatMessage) -> str:
        try:  # as mistral-common does: a result that is JSON goes as JSON, other text as a string
            content: Any = finitejson.loads(message.content)
        except (ValueError, RecursionError):
            content = message.content
        body = json.dumps(
            {"content": content, "call_id": mistral_id(message.tool_call_id)}, ensure_ascii=False
        )
        return f"[TOOL_RESULTS]{body}[/TOOL_RESULTS]"

    def template_call_id(self, call_id: str) -> str:
        return mistral_id(call_id)

    def grammar(self, tools: Tools, to_gbnf: ToGbnf, only: str | None = None) -> CallGrammar:
        """The v3 form: the tag, then a JSON list of calls of the offered tools. Triggered once
        the list has begun (``[TOOL_CALLS][``): a v11+ model writing ``[TOOL_CALLS]name[ARGS]``
        is never held to the list form it was not trained on; its calls are only parsed."""
        item = tool_call_schema(tools, only)
        g = tagged_json_grammar(TAG, "", {"type": "array", "items": item, "minItems": 1}, to_gbnf, _WS, '[{"')
        trigger = f"({ecma_escape(TAG)}){_WS}\\[{_OBJECT_START}$"
        return CallGrammar(g.gbnf, (trigger,))


FORMAT = Mistral()
