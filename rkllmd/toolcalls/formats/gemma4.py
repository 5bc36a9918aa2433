"""Gemma 4 tool calls: ``<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>``.

Gemma 4 has tool tokens of its own (ai.google.dev "Gemma 4 prompt formatting", "Function calling
with Gemma 4"; the chat template Gemma 4's GGUFs carry, kept in tests/fixtures/gemma4.jinja):

- tools are declared in the system turn, each ``<|tool>declaration:NAME{description:...,
  parameters:{properties:{...},required:[...],type:<|"|>OBJECT<|"|>}}<tool|>``;
- a call is ``<|tool_call>call:NAME{key:value,...}<tool_call|>``, several back to back; keys are
  bare, strings sit between ``<|"|>`` tokens (so quotes, braces and commas inside are text),
  numbers, ``true``/``false``, lists ``[...]`` and objects ``{key:value}`` as written;
- a result is ``<|tool_response>response:NAME{...}<tool_response|>``.

The six tags and ``<|"|>`` are control tokens: llama.cpp streams them as text for this format
(``visible_tokens``); on RKLLM set ``skip_special_token = false``. On llama.cpp a lazy grammar,
written here (the syntax is not JSON, which llama.cpp's converter writes), holds a started call to
an offered tool, its parameters and each value's type.
Thread: whichever feeds the parser (the token sink's); one parser per generation.
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

from rkllmd.generation import ToolCall
from rkllmd.toolcalls.calls import new_call_id
from rkllmd.toolcalls.format import (
    CallGrammar,
    ToGbnf,
    ToolFormat,
    Tools,
    ecma_escape,
    keyword_call_rules,
    offered,
    optional_prefixes,
)
from rkllmd.toolcalls.formats._tagged import TaggedParser, text_until

if TYPE_CHECKING:
    from rkllmd.generation import ChatMessage

OPEN, CLOSE = "<|tool_call>", "<tool_call|>"
Q = '<|"|>'  # the string delimiter token
_CALL = re.compile(r"\s*call:([A-Za-z0-9_.:-]{1,64})\s*(\{.*\})\s*\Z", re.S)
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_WORDS = {"true": True, "false": False, "null": None, "None": None}  # None: the template's {{ none }}
_KEY_END = re.compile(r"[:{}\[\],]")
_NAME = re.compile(r"gemma[-_ .]?4(?!\d*b)")  # gemma-4-e2b-it, gemma4:e4b; not gemma-4b (Gemma 3 4B)
_MAX_DEPTH = 32


class _Reader:
    """A recursive-descent reader of one call's argument object in Gemma 4's syntax."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{what} at {self.text[self.pos : self.pos + 20]!r}")

    def ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r\n":
            self.pos += 1

    def value(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise self.fail("nested too deep")
        self.ws()
        t = self.text
        if t.startswith(Q, self.pos):
            end = t.find(Q, self.pos + len(Q))
            if end < 0:
                raise self.fail("a string never closed")
            s, self.pos = t[self.pos + len(Q) : end], end + len(Q)
            return s
        if t.startswith('"', self.pos):  # a JSON string, which models also write
            try:
                s, self.pos = json.JSONDecoder().raw_decode(t, self.pos)
            except ValueError:
                raise self.fail("a broken string") from None
            return s
        if t.startswith("{", self.pos):
            return self.obj(depth + 1)
        if t.startswith("[", self.pos):
            self.pos += 1
            items: list[Any] = []
            self.ws()
            if t.startswith("]", self.pos):
                self.pos += 1
                return items
            while True:
                items.append(self.value(depth + 1))
                self.ws()
                if t.startswith("]", self.pos):
                    self.pos += 1
                    return items
                if not t.startswith(",", self.pos):
                    raise self.fail("expected , or ]")
                self.pos += 1
        m = _NUMBER.match(t, self.pos)
        if m:
            self.pos = m.end()
            n = float(m.group()) if any(c in m.group() for c in ".eE") else int(m.group())
            if isinstance(n, float) and not math.isfinite(n):
                raise self.fail("a number no JSON can carry")
            return n
        for word, v in _WORDS.items():
            if (
                t.startswith(word, self.pos)
                and not t[self.pos + len(word) : self.pos + len(word) + 1].isalnum()
            ):
                self.pos += len(word)
                return v
        raise self.fail("not a value")

    def obj(self, depth: int) -> dict[str, Any]:
        t, out = self.text, dict[str, Any]()
        self.pos += 1  # the "{"
        self.ws()
        if t.startswith("}", self.pos):
            self.pos += 1
            return out
        while True:
            self.ws()
            if t.startswith(Q, self.pos) or t.startswith('"', self.pos):
                key = self.value(depth)
            else:
                m = _KEY_END.search(t, self.pos)
                if not m or m.group() != ":":
                    raise self.fail("expected key:value")
                key, self.pos = t[self.pos : m.start()].strip(), m.start()
            self.ws()
            if not isinstance(key, str) or not key or not t.startswith(":", self.pos):
                raise self.fail("expected key:value")
            self.pos += 1
            out[key] = self.value(depth)
            self.ws()
            if t.startswith("}", self.pos):
                self.pos += 1
                return out
            if not t.startswith(",", self.pos):
                raise self.fail("expected , or }")
            self.pos += 1


def read_body(body: str) -> list[ToolCall]:
    """One block's body, ``call:NAME{...}``, as its call; ValueError saying why it is not one."""
    m = _CALL.match(body)
    if not m:
        raise ValueError("not call:NAME{...}")
    reader = _Reader(m.group(2))
    args = reader.obj(0)
    if reader.pos != len(reader.text):
        raise reader.fail("text after the arguments")
    return [ToolCall(new_call_id(), m.group(1), args)]


def argument(value: Any) -> str:
    """``value`` as the template's ``format_argument(value, escape_keys=False)`` writes it."""
    if isinstance(value, str):
        return f"{Q}{value}{Q}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{argument(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, list):
        return "[" + ",".join(argument(v) for v in value) + "]"
    return "null" if value is None else json.dumps(value)


def _properties(props: dict[str, Any]) -> str:
    """The template's ``format_parameters``: each property's description, enum, nested
    properties or items, and upper-case type, keys in sorted order."""
    parts = []
    for key, spec in sorted(props.items()):
        if not isinstance(spec, dict):
            continue
        kind = spec.get("type", "string")
        kind = str(kind if isinstance(kind, str) else (kind or ["string"])[0]).upper()
        fields = [f"description:{Q}{spec['description']}{Q}"] if spec.get("description") else []
        if spec.get("nullable"):
            fields.append("nullable:true")
        if kind == "STRING" and spec.get("enum"):
            fields.append(f"enum:{_escaped(spec['enum'])}")
        elif kind == "OBJECT":
            fields.append("properties:{" + _properties(spec.get("properties") or {}) + "}")
            if spec.get("required"):
                fields.append("required:[" + ",".join(f"{Q}{r}{Q}" for r in spec["required"]) + "]")
        elif kind == "ARRAY" and isinstance(spec.get("items"), dict) and spec["items"]:
            items = {k: v for k, v in spec["items"].items() if v is not None}
            fields.append("items:{" + ",".join(_item(k, v) for k, v in sorted(items.items())) + "}")
        fields.append(f"type:{Q}{kind}{Q}")
        parts.append(f"{key}:{{{','.join(fields)}}}")
    return ",".join(parts)


def _item(key: str, value: Any) -> str:
    if key == "properties" and isinstance(value, dict):
        return "properties:{" + _properties(value) + "}"
    if key == "type":
        return (
            f"type:{_escaped(value.upper() if isinstance(value, str) else [str(v).upper() for v in value])}"
        )
    return f"{key}:{_escaped(value)}"


def _escaped(value: Any) -> str:
    """``format_argument`` with its default ``escape_keys=True`` (declarations quote keys)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{Q}{k}{Q}:{_escaped(v)}" for k, v in sorted(value.items())) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_escaped(v) for v in value) + "]"
    return argument(value)


def declaration(tool: dict[str, Any]) -> str:
    """One tool as the template declares it: ``<|tool>declaration:NAME{...}<tool|>``."""
    fn = tool.get("function", {})
    text = f"declaration:{fn.get('name', '')}{{description:{Q}{fn.get('description', '')}{Q}"
    params = fn.get("parameters") or {}
    if params:
        text += ",parameters:{"
        if params.get("properties"):
            text += "properties:{" + _properties(params["properties"]) + "},"
        if params.get("required"):
            text += "required:[" + ",".join(f"{Q}{r}{Q}" for r in params["required"]) + "],"
        if params.get("type"):
            text += f"type:{Q}{str(params['type']).upper()}{Q}}}"
    return f"<|tool>{text}}}<tool|>"


# Values the schema does not type: any of the syntax's values, nested as deep as the model likes.
_VALUE_RULES = (
    'g-str ::= "<|\\"|>" s-0 "<|\\"|>"\n'
    'g-int ::= "-"? ("0" | [1-9] [0-9]{0,19})\n'
    'g-num ::= g-int ("." [0-9]{1,20})? ([eE] [-+]? [0-9]{1,4})?\n'
    'g-bool ::= "true" | "false"\n'
    'g-value ::= g-str | g-num | g-bool | "null" | g-list | g-obj\n'
    'g-list ::= "[" (g-value ("," g-value)*)? "]"\n'
    'g-obj ::= "{" (g-key ":" g-value ("," g-key ":" g-value)*)? "}"\n'
    "g-key ::= [A-Za-z_] [A-Za-z0-9_]{0,63} | g-str\n"
)
_TYPED = {
    "string": "g-str",
    "integer": "g-int",
    "number": "g-num",
    "boolean": "g-bool",
    "array": "g-list",
    "object": "g-obj",
}


def _value_rule(spec: Any) -> str:
    """GBNF for one argument: its enum's strings, else its type's values (any value untyped)."""
    spec = spec if isinstance(spec, dict) else {}
    kinds = spec.get("type") if isinstance(spec.get("type"), list) else [spec.get("type")]
    null = ' | "null"' if "null" in kinds or spec.get("nullable") else ""
    enum = spec.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(e, str) and Q not in e for e in enum):
        return "(" + " | ".join(json.dumps(f"{Q}{e}{Q}", ensure_ascii=False) for e in enum) + null + ")"
    main = next((k for k in kinds if k != "null"), None)
    return f"({_TYPED.get(main, 'g-value') if isinstance(main, str) else 'g-value'}{null})"


def call_grammar(tools: Tools, only: str | None) -> CallGrammar:
    """Calls of ``tools`` (or ``only``): each an offered tool, its own parameters in any order,
    each value of its schema's type; the lazy trigger at ``<|tool_call>``."""
    rules = ["root ::= tool-call (tool-ws tool-call)* tool-ws", "tool-ws ::= [ \\t\\n]{0,4}"]
    fns: list[str] = []
    for i, fn, props in offered(tools, only):
        fns.append(f"fn-{i}")
        head = f"{fn.get('name', '')}{{"
        rules += keyword_call_rules(i, head, props, _value_rule, key_end=":", sep='","', close='"}"')
    rules.append(f'tool-call ::= "{OPEN}call:" ({" | ".join(fns)}) "{CLOSE}"')
    trigger = f"({ecma_escape(OPEN)}){optional_prefixes('call:')}$"
    return CallGrammar("\n".join(rules) + "\n" + _VALUE_RULES + text_until("s", Q), (trigger,))


class Gemma4(ToolFormat):
    name = "gemma4"
    priority = 5  # its template and name are its own; above the Hermes fallback's name check
    visible_tokens = (OPEN, CLOSE, Q)

    def detect(self, chat_template: str | None, model_name: str) -> bool:
        if chat_template:
            return OPEN in chat_template
        return _NAME.search(model_name) is not None

    def parser(self, tools: Tools) -> TaggedParser:
        return TaggedParser((OPEN,), CLOSE, read_body)

    def render_tools(self, system: str | None, tools: Tools) -> str:
        block = "".join(declaration(t) for t in tools)
        return f"{system.strip()}{block}" if system else block

    def render_call_turn(self, message: ChatMessage) -> str:
        # The template writes a model turn's calls first, then its text.
        return "".join(f"{OPEN}call:{c.name}{argument(c.arguments)}{CLOSE}" for c in message.tool_calls) + (
            message.content
        )

    def render_tool_result(self, message: ChatMessage) -> str:
        # The template's form for a response that is not a mapping: the text as one string value.
        name = message.name or "unknown"
        return f"<|tool_response>response:{name}{{value:{Q}{message.content}{Q}}}<tool_response|>"

    def grammar(self, tools: Tools, to_gbnf: ToGbnf, only: str | None = None) -> CallGrammar:
        """Written here, not by the JSON converter: the syntax is not JSON (docs/TOOLS.md)."""
        return call_grammar(tools, only)


FORMAT = Gemma4()
