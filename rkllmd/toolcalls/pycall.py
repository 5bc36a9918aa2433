"""Python call syntax read as tool calls, without running anything: ``get_weather(city="Paris")``.

Families that write their calls as Python (Gemma 3 inside a ```tool_code``` block) are read
here. ``ast.parse`` in eval mode turns each expression into a syntax tree, and only calls whose
arguments are literals are taken from it: strings, numbers, booleans, None, and lists, tuples
and dicts of those (also JSON's ``true``/``false``/``null``, which small models write). Nothing
is evaluated and no name is looked up, so the text cannot run code; anything else (a variable,
an operator, a comprehension, ``**kwargs``) makes the text not a call, with the reason.

Pure functions; any thread (a format's parser calls them on the token sink's thread).
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Sequence
from typing import Any

#: characters of call text read at most: the syntax tree's size follows the text's
MAX_SOURCE = 16_384
#: lines read at most: each unfinished line is parsed again with the next one
MAX_LINES = 100
#: how deep lists and dicts nest in an argument at most
MAX_DEPTH = 32
_JSON_NAMES = {"true": True, "false": False, "null": None}


def read_calls(source: str, tools: Sequence[dict[str, Any]] = ()) -> list[tuple[str, dict[str, Any]]]:
    """The calls in ``source``, in order: one expression per line (a call whose parentheses span
    lines is read whole), each a call, a call wrapped in ``print(...)``, or a list or tuple of
    calls. Positional arguments are bound to the tool's parameters in its schema's order.
    ValueError saying why when the text is anything else."""
    if len(source) > MAX_SOURCE:
        raise ValueError(f"longer than {MAX_SOURCE} characters")
    if source.count("\n") >= MAX_LINES:
        raise ValueError(f"more than {MAX_LINES} lines")
    calls: list[tuple[str, dict[str, Any]]] = []
    for expr in _expressions(source):
        calls += _calls_of(expr, tools)
    if not calls:
        raise ValueError("no call")
    return calls


def _expressions(source: str) -> list[ast.expr]:
    """Each expression of ``source``, parsed in eval mode; lines are joined until they parse, so
    a call written over several lines is one expression."""
    out: list[ast.expr] = []
    pending = ""
    for line in source.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        if not pending.strip():
            pending = ""
            continue
        try:
            out.append(ast.parse(pending.strip(), mode="eval").body)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue  # perhaps a call still open: read the next line with it
        pending = ""
    if pending.strip():
        raise ValueError(f"not Python call syntax: {pending.strip()[:60]!r}")
    return out


def _calls_of(node: ast.expr, tools: Sequence[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(node, ast.List | ast.Tuple):
        return [c for item in node.elts for c in _calls_of(item, tools)]
    if not isinstance(node, ast.Call):
        raise ValueError(f"not a call: {type(node).__name__}")
    name = dotted(node.func)
    if name == "print" and len(node.args) == 1 and not node.keywords:
        return _calls_of(node.args[0], tools)  # print(f(...)): what Gemma writes, the call inside
    names = {t.get("function", {}).get("name") for t in tools}
    if name not in names and "." in name:
        name = name.rsplit(".", 1)[1]  # default_api.f(...): the Gemini habit of a module prefix
    args: dict[str, Any] = {}
    params = _param_order(name, tools)
    if len(node.args) > len(params):
        raise ValueError(f"{name}: a positional argument with no parameter to bind it to")
    for param, value in zip(params, node.args, strict=False):
        args[param] = literal(value)
    return [(name, keyword_args(node, args))]


def keyword_args(
    node: ast.Call, args: dict[str, Any] | None = None, *, tuples: bool = True
) -> dict[str, Any]:
    """``args`` (the positional arguments already bound) with the call's ``name=value``
    arguments added, each a literal; ValueError for ``**kwargs`` or a name given twice."""
    args = {} if args is None else args
    for kw in node.keywords:
        if kw.arg is None:
            raise ValueError("**arguments are not literals")
        if kw.arg in args:
            raise ValueError(f"argument {kw.arg!r} given twice")
        args[kw.arg] = literal(kw.value, tuples=tuples)
    return args


def dotted(node: ast.expr) -> str:
    """The called name, dotted when it is an attribute (``default_api.f``); ValueError when
    the call is of something else (``f()()``, ``x[0]()``)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    raise ValueError(f"not a function name: {type(node).__name__}")


def _param_order(name: str, tools: Sequence[dict[str, Any]]) -> list[str]:
    for t in tools:
        fn = t.get("function", {})
        if fn.get("name") == name:
            props = (fn.get("parameters") or {}).get("properties") or {}
            return list(props) if isinstance(props, dict) else []
    return []


def literal(node: ast.expr, *, tuples: bool = True, depth: int = 0) -> Any:
    """The JSON value a literal's syntax tree stands for; ValueError for anything that is not one
    (a name, an operator, a set, bytes, a number no JSON can carry, nesting past MAX_DEPTH).
    ``tuples=False`` for formats whose parsers take lists only (the pythonic one, as vLLM's)."""
    if depth > MAX_DEPTH:
        raise ValueError("arguments nested too deeply")
    if isinstance(node, ast.Constant):
        v = node.value
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("a number that is not finite")
        if v is None or isinstance(v, str | bool | int | float):
            return v
        raise ValueError(f"not a JSON literal: {v!r:.40}")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        v = literal(node.operand, tuples=tuples, depth=depth + 1)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
        raise ValueError("a sign before something that is not a number")
    if isinstance(node, ast.List) or (tuples and isinstance(node, ast.Tuple)):
        return [literal(e, tuples=tuples, depth=depth + 1) for e in node.elts]
    if isinstance(node, ast.Dict):
        out: dict[str, Any] = {}
        for k_node, v_node in zip(node.keys, node.values, strict=True):
            if not (isinstance(k_node, ast.Constant) and isinstance(k_node.value, str)):
                raise ValueError("a dict key that is not a string")
            out[k_node.value] = literal(v_node, tuples=tuples, depth=depth + 1)
        return out
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    raise ValueError(f"not a literal: {ast.unparse(node)[:60]}")


def py_literal(value: Any, *, json_strings: bool = False) -> str:
    """``value`` (JSON data) written as a Python literal, as a model of the family writes it:
    strings double-quoted where they hold no double quote (Gemma), or always in JSON's
    spelling with ``json_strings`` (the pythonic format, whose prompt is JSON)."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    quote = _json_quoted if json_strings else _quoted
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, list):
        return "[" + ", ".join(py_literal(v, json_strings=json_strings) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{quote(str(k))}: {py_literal(v, json_strings=json_strings)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    return repr(value)


def _quoted(text: str) -> str:
    # repr() picks single quotes; the double-quoted form is what Gemma writes and reads
    out = repr(text)
    if out.startswith("'") and '"' not in text:
        out = '"' + out[1:-1].replace("\\'", "'") + '"'
    return out


def _json_quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def call_text(name: str, arguments: dict[str, Any], *, json_strings: bool = False) -> str:
    """One call in Python syntax: ``get_weather(city="Paris", days=2)``."""
    args = ", ".join(f"{k}={py_literal(v, json_strings=json_strings)}" for k, v in arguments.items())
    return f"{name}({args})"
