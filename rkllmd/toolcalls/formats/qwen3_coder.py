"""Qwen3-Coder tool calls: XML inside ``<tool_call>``, each parameter's value as plain text.

Qwen3-Coder's chat template (tests/fixtures/qwen3-coder.jinja) offers the tools as XML
(``<tools><function><name>…</name><description>…</description><parameters><parameter>…``) and asks
for calls as

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

one ``<tool_call>`` per call. A value is raw text (no quotes, no escaping, several lines if need
be), so its type comes from the tool's JSON schema, as Qwen's own parser does it: a string stays
text; an integer, number or boolean is read as one (``True`` as the template writes Python's);
an object or array is JSON (or the Python literal the template's ``| string`` writes); ``null``
is None; a value that does not read as its type, or a parameter the schema does not name, stays
text. A block whose body is Hermes's JSON object instead is read as that. Results go back in
``<tool_response>``, as Hermes.

It writes ``<tool_call>`` as Hermes does, so it ranks above Hermes (``priority``) and recognises
only its own template (``<function=`` and ``<parameter=``): Qwen2.5's and Qwen3's stay Hermes.
On llama.cpp a lazy grammar holds a started call to the offered tools, their parameters and each
value's type (written here: llama.cpp's converter writes JSON, and these values are raw text).
Thread: whichever feeds the parser (the token sink's); one parser per generation.
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import TYPE_CHECKING, Any

from rkllmd.generation import ToolCall
from rkllmd.toolcalls.calls import new_call_id, parse_calls
from rkllmd.toolcalls.format import (
    CallGrammar,
    ToGbnf,
    ToolFormat,
    Tools,
    ecma_escape,
    offered,
    optional_prefixes,
)
from rkllmd.toolcalls.formats._tagged import ReadBody, TaggedParser, text_until
from rkllmd.toolcalls.pycall import literal

if TYPE_CHECKING:
    from rkllmd.generation import ChatMessage

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_FUNCTION = re.compile(r"<function=([^>\n]{1,64})>(.*?)</function>", re.S)
_PARAMETER = re.compile(r"<parameter=([^>\n]{1,128})>(.*?)</parameter>", re.S)
_NAME = re.compile(r"qwen3[-_ .]?coder")
_HEAD = "\n\nYou have access to the following functions:\n\n<tools>"
_DEFAULT_SYSTEM = "You are Qwen, a helpful AI assistant that can interact with a computer to solve tasks."
# The template's instructions, word for word.
_TAIL = (
    "\n</tools>\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n"
    "</parameter>\n<parameter=example_parameter_2>\nThis is the value for the second parameter\n"
    "that can span\nmultiple lines\n</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n"
    "- Function calls MUST follow the specified format: an inner <function=...></function> block "
    "must be nested within <tool_call></tool_call> XML tags\n- Required parameters MUST be specified\n"
    "- You may provide optional reasoning for your function call in natural language BEFORE the "
    "function call, but NOT after\n- If there is no function call available, answer the question "
    "like normal with your current knowledge and do not tell the user about function calls\n</IMPORTANT>"
)
_HANDLED = ("type", "description", "enum", "required")


def _types(tools: Tools) -> dict[str, dict[str, str]]:
    """Each offered tool's parameters and their JSON-schema type (the first non-null one)."""
    out: dict[str, dict[str, str]] = {}
    for t in tools:
        fn = t.get("function", {})
        props = (fn.get("parameters") or {}).get("properties") or {}
        kinds: dict[str, str] = {}
        for name, spec in props.items() if isinstance(props, dict) else ():
            kind = spec.get("type") if isinstance(spec, dict) else None
            if isinstance(kind, list):
                kind = next((k for k in kind if k != "null"), None)
            kinds[name] = kind if isinstance(kind, str) else "string"
        out[fn.get("name", "")] = kinds
    return out


def typed(raw: str, kind: str | None) -> Any:
    """A parameter's raw text as the type its schema gives (None: the tool or parameter is not
    offered); text that does not read as that type stays text."""
    if kind is None or kind == "string":
        return raw
    if raw.strip() == "null":
        return None
    text = raw.strip()
    if kind == "integer" and re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    if kind == "number":
        try:
            n = float(text)
        except ValueError:
            return raw
        if not math.isfinite(n):
            return raw
        return int(n) if re.fullmatch(r"[-+]?\d+", text) else n
    if kind == "boolean" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if kind in ("object", "array"):
        try:
            return json.loads(text, parse_constant=_no_constant)
        except ValueError:
            pass
        try:  # the template writes a non-string argument with Jinja's | string: Python's repr
            return literal(ast.parse(text, mode="eval").body)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return raw
    return raw


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def read_body(tools: Tools) -> ReadBody:
    """The reader of one ``<tool_call>`` block's body for a parser offered ``tools``."""
    kinds = _types(tools)

    def read(body: str) -> list[ToolCall]:
        calls, pos = [], 0
        for m in _FUNCTION.finditer(body):
            if body[pos : m.start()].strip():
                raise ValueError("text outside <function=...></function>")
            pos = m.end()
            name, inner = m.group(1).strip(), m.group(2)
            params = kinds.get(name, {})
            args: dict[str, Any] = {}
            ppos = 0
            for p in _PARAMETER.finditer(inner):
                if inner[ppos : p.start()].strip():
                    raise ValueError(f"{name}: text outside <parameter=...></parameter>")
                ppos = p.end()
                value = p.group(2)
                # the template puts the value on lines of its own: one newline each side is markup
                value = value[1:] if value.startswith("\n") else value
                value = value[:-1] if value.endswith("\n") else value
                key = p.group(1).strip()
                args[key] = typed(value, params.get(key) if name in kinds else None)
            if inner[ppos:].strip():
                raise ValueError(f"{name}: an unclosed or stray parameter")
            calls.append(ToolCall(new_call_id(), name, args))
        if not calls and body.strip().startswith("{"):
            json_calls = parse_calls(body.strip())  # Hermes's JSON body, which it falls back to
            if json_calls is not None:
                return json_calls
        if not calls or body[pos:].strip():
            raise ValueError("not <function=NAME>...</function>")
        return calls

    return read


def tool_xml(tool: dict[str, Any]) -> str:
    """One tool as the template lists it inside ``<tools>``."""
    fn = tool.get("function", tool)
    params = fn.get("parameters") or {}
    text = f"\n<function>\n<name>{fn.get('name', '')}</name>"
    text += f"\n<description>{str(fn.get('description', '')).strip()}</description>\n<parameters>"
    for pname, spec in (params.get("properties") or {}).items():
        spec = spec if isinstance(spec, dict) else {}
        text += f"\n<parameter>\n<name>{pname}</name>"
        if "type" in spec:
            text += f"\n<type>{spec['type']}</type>"
        if "description" in spec:
            text += f"\n<description>{str(spec['description']).strip()}</description>"
        for key, value in spec.items():
            if key in _HANDLED or value is None:
                continue
            tag = key.replace("-", "_").replace(" ", "_").replace("$", "")
            body = json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else str(value)
            text += f"\n<{tag}>{body}</{tag}>"
        text += _required(spec.get("required")) + "\n</parameter>"
    return text + _required(params.get("required")) + "\n</parameters>\n</function>"


def _required(items: Any) -> str:
    if not isinstance(items, list) or not items:
        return ""
    return (
        "\n<required>["
        + ", ".join(f"`{i}`" if isinstance(i, str) else str(i) for i in items)
        + "]</required>"
    )


_SCALARS = {
    "integer": '"-"? [0-9]{1,20}',
    "number": '"-"? [0-9]{1,20} ("." [0-9]{1,20})? ([eE] [-+]? [0-9]{1,4})?',
    "boolean": '"true" | "false"',
}
_WS = "[ \\t\\n]{0,4}"


def _value_rule(spec: Any) -> str:
    """GBNF for one parameter's value: its enum's strings, a number or boolean as written, else
    any text without the closing tag (strings, and objects or arrays, which are JSON text)."""
    spec = spec if isinstance(spec, dict) else {}
    kind = spec.get("type")
    kinds = kind if isinstance(kind, list) else [kind]
    null = ' | "null"' if "null" in kinds else ""
    main = next((k for k in kinds if k != "null"), None)
    enum = spec.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(e, str) and "\n" not in e for e in enum):
        return "(" + " | ".join(json.dumps(e, ensure_ascii=False) for e in enum) + null + ")"
    if main in _SCALARS:
        return f"({_SCALARS[main]}{null})"
    return "v-0"


def xml_grammar(tools: Tools, only: str | None) -> CallGrammar:
    """Calls of ``tools`` (or ``only``) as the template asks, each parameter one the tool names
    with a value of its type, and the lazy trigger at ``<tool_call>``."""
    rules = [
        "root ::= tool-call (tool-ws tool-call)* tool-ws",
        f"tool-ws ::= {_WS}",
    ]
    fns: list[str] = []
    for i, fn, props in offered(tools, only):
        fns.append(f"fn-{i}")
        params = [f"fn-{i}-p-{j}" for j in range(len(props))]
        head = json.dumps(f"<function={fn.get('name', '')}>\n", ensure_ascii=False)
        body = f" ({' | '.join(params)})*" if params else ""
        rules.append(f'fn-{i} ::= {head}{body} "</function>"')
        for j, (pname, spec) in enumerate(props.items()):
            tag = json.dumps(f"<parameter={pname}>\n", ensure_ascii=False)
            rules.append(f'fn-{i}-p-{j} ::= {tag} {_value_rule(spec)} "\\n</parameter>\\n"')
    rules.append(f'tool-call ::= "{OPEN}" tool-ws ({" | ".join(fns)}) tool-ws "{CLOSE}"')
    trigger = f"({ecma_escape(OPEN)}){_WS}{optional_prefixes('<function=')}$"
    return CallGrammar("\n".join(rules) + "\n" + text_until("v", "</parameter>"), (trigger,))


def call_xml(call: ToolCall) -> str:
    params = "".join(
        f"<parameter={k}>\n{v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}\n</parameter>\n"
        for k, v in call.arguments.items()
    )
    return f"{OPEN}\n<function={call.name}>\n{params}</function>\n{CLOSE}"


class Qwen3Coder(ToolFormat):
    name = "qwen3_coder"
    # Its calls open with <tool_call> as Hermes's do: asked before Hermes, it keeps its templates.
    priority = 5
    visible_tokens = (OPEN, CLOSE)

    def detect(self, chat_template: str | None, model_name: str) -> bool:
        if chat_template:
            return "<function=" in chat_template and "<parameter=" in chat_template
        return _NAME.search(model_name) is not None

    def parser(self, tools: Tools) -> TaggedParser:
        return TaggedParser((OPEN,), CLOSE, read_body(tools))

    def render_tools(self, system: str | None, tools: Tools) -> str:
        return (system or _DEFAULT_SYSTEM) + _HEAD + "".join(tool_xml(t) for t in tools) + _TAIL

    def render_call_turn(self, message: ChatMessage) -> str:
        head = f"{message.content.strip()}\n" if message.content.strip() else ""
        return head + "\n".join(call_xml(c) for c in message.tool_calls)

    def render_tool_result(self, message: ChatMessage) -> str:
        return f"<tool_response>\n{message.content}\n</tool_response>"

    def grammar(self, tools: Tools, to_gbnf: ToGbnf, only: str | None = None) -> CallGrammar:
        """Written here, not by the JSON converter: the values are raw text (docs/TOOLS.md)."""
        return xml_grammar(tools, only)


FORMAT = Qwen3Coder()
