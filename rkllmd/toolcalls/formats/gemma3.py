"""Gemma 3 tool calls: a ```tool_code``` block holding a Python call, results in ```tool_output```.

Gemma 3 has no tool tokens and its chat template does not render tools; the convention Google
documents for it (ai.google.dev "Function calling with Gemma" and its Gemma cookbook agent
prompt, also ai.google.dev's meme-generator guide) offers the tools as Python function
signatures with docstrings and asks for calls "wrapped with ```tool_code```"; results go back
"wrapped in ```tool_output```". What the model writes, one call per line:

    ```tool_code
    get_weather(city="Paris")
    ```

also ``print(get_weather(...))``, ``default_api.get_weather(...)``, a list of calls, or a JSON
``{"name": ..., "parameters": {...}}`` object (the guide's JSON variant), inside the same fence.
The Python is read by ``rkllmd.toolcalls.pycall`` (``ast`` in eval mode, literals only, never
run). The guide's other variant, a bare ``[f(a=1)]`` list as the whole answer, is the pythonic
format's. ``` ``tool_call`` ``` (the prompt's own slip: "When using a ```tool_call```") opens a
block too.

On llama.cpp a lazy grammar, written here (llama.cpp's converter writes JSON), starts at the
```` ```tool_code ```` fence and holds the block to calls of the offered tools with keyword
arguments of their parameters, each a Python literal of its type. Thread: whichever feeds the
parser (the token sink's); one parser per generation.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from rkllmd.generation import ToolCall
from rkllmd.toolcalls import pycall
from rkllmd.toolcalls.calls import new_call_id, parse_calls
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
from rkllmd.toolcalls.formats._tagged import ReadBody, TaggedParser

if TYPE_CHECKING:
    from rkllmd.generation import ChatMessage

OPEN = "```tool_code"
OPENS = (OPEN, "```tool_call")
CLOSE = "```"
# The Gemma cookbook's agent prompt, word for word, so the model reads what Google tested.
_HEAD = (
    "At each turn, if you decide to invoke any of the function(s), it should be wrapped with "
    "```tool_code```. The python methods described below are imported and available, you can only "
    "use defined methods. The generated code should be readable and efficient. The response to a "
    "method will be wrapped in ```tool_output``` use it to call more tools or generate a helpful, "
    "friendly response. When using a ```tool_call``` think step by step why and how it should be "
    "used.\n\nThe following Python methods are available:\n\n```python\n"
)
_PY_TYPES = {
    "string": "str",
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "array": "list",
    "object": "dict",
}
_NAME = re.compile(r"gemma[-_ .]?[23](?!\d)")  # gemma-3-4b-it, gemma3:4b, gemma-2-2b; not gemma-270m


def read_body(tools: Tools) -> ReadBody:
    """The reader of one block's body for a parser offered ``tools``."""

    def read(body: str) -> list[ToolCall]:
        text = body.strip()
        if text.startswith(("{", "[{")):
            calls = parse_calls(text)
            if calls is not None:
                return calls
        return [ToolCall(new_call_id(), n, a) for n, a in pycall.read_calls(text, tools)]

    return read


def signature(tool: dict[str, Any]) -> str:
    """A tool as the Python ``def`` with a docstring that the cookbook offers."""
    fn = tool.get("function", {})
    params = fn.get("parameters") or {}
    props: dict[str, Any] = params.get("properties") or {}
    required = set(params.get("required") or [])
    args, docs = [], []
    for name in sorted(props, key=lambda n: n not in required):  # required ones first, in order
        spec = props[name] if isinstance(props[name], dict) else {}
        kind = spec.get("type")
        py = _PY_TYPES.get(kind if isinstance(kind, str) else "", "Any")
        args.append(f"{name}: {py}" if name in required else f"{name}: {py} | None = None")
        docs.append(f"      {name}: {spec.get('description', '')}".rstrip())
    doc = fn.get("description", "")
    if docs:
        doc = f"{doc}\n\n    Args:\n" + "\n".join(docs)
    return f'def {fn.get("name", "")}({", ".join(args)}):\n    """{doc}\n    """\n'


# Python literals as the grammar allows them in a call's arguments.
_PY_RULES = (
    'py-str ::= "\\"" ([^"\\\\\\n] | "\\\\" [^\\n])* "\\""'
    ' | "\'" ([^\'\\\\\\n] | "\\\\" [^\\n])* "\'"\n'
    'py-int ::= "-"? [0-9]{1,20}\n'
    'py-num ::= py-int ("." [0-9]{1,20})? ([eE] [-+]? [0-9]{1,4})?\n'
    'py-bool ::= "True" | "False"\n'
    'py-value ::= py-str | py-num | py-bool | "None" | py-list | py-dict\n'
    'py-list ::= "[" (py-value ("," " "? py-value)*)? "]"\n'
    'py-dict ::= "{" (py-str ":" " "? py-value ("," " "? py-str ":" " "? py-value)*)? "}"\n'
)
_PY_TYPED = {
    "string": "py-str",
    "integer": "py-int",
    "number": "py-num",
    "boolean": "py-bool",
    "array": "py-list",
    "object": "py-dict",
}


def _arg_rule(spec: Any) -> str:
    spec = spec if isinstance(spec, dict) else {}
    kinds = spec.get("type") if isinstance(spec.get("type"), list) else [spec.get("type")]
    none = ' | "None"' if "null" in kinds else ""
    enum = spec.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(e, str) for e in enum):
        return (
            "(" + " | ".join(json.dumps(pycall.py_literal(e), ensure_ascii=False) for e in enum) + none + ")"
        )
    main = next((k for k in kinds if k != "null"), None)
    return f"({_PY_TYPED.get(main, 'py-value') if isinstance(main, str) else 'py-value'}{none})"


def call_grammar(tools: Tools, only: str | None) -> CallGrammar:
    """A ```tool_code``` block of calls to ``tools`` (or ``only``), one a line, keyword arguments
    of the tools' parameters in any order, each value a Python literal of its schema's type."""
    rules = ['root ::= "' + OPEN + '\\n" py-call ("\\n" py-call)* "\\n' + CLOSE + '"']
    fns: list[str] = []
    for i, fn, props in offered(tools, only):
        fns.append(f"fn-{i}")
        head = f"{fn.get('name', '')}("
        rules += keyword_call_rules(i, head, props, _arg_rule, key_end="=", sep='"," " "?', close='")"')
    rules.append(f"py-call ::= {' | '.join(fns)}")
    trigger = f"({ecma_escape(OPEN)}){optional_prefixes(chr(10))}$"
    return CallGrammar("\n".join(rules) + "\n" + _PY_RULES, (trigger,))


class Gemma3(ToolFormat):
    name = "gemma3"
    priority = 5  # its template and name are its own; above the Hermes fallback's name check

    def detect(self, chat_template: str | None, model_name: str) -> bool:
        if chat_template:
            # Gemma 2/3's turns; not FunctionGemma (its own tokens), Gemma 4 (<|turn>), nor a
            # fine-tune whose template writes Hermes calls
            return "<start_of_turn>" in chat_template and not any(
                t in chat_template for t in ("<start_function_call>", "<tool_call>")
            )
        return _NAME.search(model_name) is not None

    def parser(self, tools: Tools) -> TaggedParser:
        return TaggedParser(OPENS, CLOSE, read_body(tools))

    def render_tools(self, system: str | None, tools: Tools) -> str:
        block = _HEAD + "\n".join(signature(t) for t in tools) + "```"
        return f"{system}\n\n{block}" if system else block

    def render_call_turn(self, message: ChatMessage) -> str:
        lines = "\n".join(pycall.call_text(c.name, c.arguments) for c in message.tool_calls)
        block = f"{OPEN}\n{lines}\n{CLOSE}"
        return f"{message.content}\n{block}" if message.content else block

    def render_tool_result(self, message: ChatMessage) -> str:
        return f"```tool_output\n{message.content}\n```"

    def grammar(self, tools: Tools, to_gbnf: ToGbnf, only: str | None = None) -> CallGrammar:
        """Written here, not by the JSON converter: the calls are Python (docs/TOOLS.md)."""
        return call_grammar(tools, only)


FORMAT = Gemma3()
