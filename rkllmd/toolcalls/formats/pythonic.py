"""Pythonic tool calls: a Python list of calls, ``[get_weather(city="Paris"), f(a=1)]``.

Llama 3.2 1B/3B-Instruct's zero-shot function calling and Llama 4's (Meta's prompt formats for
both; vLLM's ``pythonic`` parser and its Llama 3.2/4 pythonic chat templates) write calls so, as
the whole answer, Llama 4 sometimes between ``<|python_start|>`` and ``<|python_end|>``. Tools are
offered as JSON in the system prompt; results go back as the ``ipython`` turn's text.

The calls are read with ``ast.parse`` (eval mode) and nothing is evaluated: a call is a name (or
dotted name) with keyword arguments whose values are literals only (strings, numbers, True/False/
None and JSON's true/false/null, lists, dicts with string keys); anything else makes the block
malformed. A list opens a call only where a line starts (the output's start included) with
``[name(`` followed by ``key=``, a quote or ``)``: a bracket in prose, ``[1, 2]``, ``[see below]`` or a
Markdown link, is text. While a line's start could still become that it is held; once it is, the
list is held until its closing bracket. Thread: whichever feeds the parser (the token sink's);
one parser per generation.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rkllmd.generation import ToolCall
from rkllmd.toolcalls import pycall
from rkllmd.toolcalls.calls import new_call_id
from rkllmd.toolcalls.format import CallGrammar, ToGbnf, ToolFormat, Tools, ecma_escape, held_suffix, withhold

if TYPE_CHECKING:
    from rkllmd.generation import ChatMessage

START = "<|python_start|>"
END = "<|python_end|>"
_IDENT = r"[A-Za-z_]\w{0,63}"
_PY_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*", re.A)  # what a call's name can be here
# A line's start that is certainly a call list: "[", a name, "(", then a keyword, a string or ")".
_CALL = re.compile(
    rf"\[[ \t]{{0,4}}[A-Za-z_][\w.]{{0,63}}[ \t]{{0,4}}\([ \t\n]{{0,4}}(?:\)|[\"']|{_IDENT}[ \t]{{0,4}}=)",
    re.A,
)
# ... and one that could still become it (each part optional once the ones before it are there).
_NAME_PART = r"[A-Za-z_][\w.]{0,63}"
_MAYBE = re.compile(
    r"\[(?:[ \t]{0,4}(?:"
    + _NAME_PART
    + r"(?:[ \t]{0,4}(?:\((?:[ \t\n]{0,4}(?:"
    + _IDENT
    + r"[ \t]{0,4})?)?)?)?)?)?",
    re.A,
)
_MAX_BLOCK = 65536  # a call list longer than this is not parsed (the AST of a huge text costs memory)
# Any JSON value (the converter reads an empty schema as an object).
_ANY_VALUE = {"type": ["string", "number", "boolean", "array", "object", "null"]}
_WS = "[ \\t\\n]{0,4}"
# Meta's zero-shot wording for Llama 3.2's pythonic calls, so the model reads what it was trained on.
_HEAD = (
    "You are an expert in composing functions. You are given a question and a set of possible functions.\n"
    "Based on the question, you will need to make one or more function/tool calls to achieve the purpose.\n"
    "If none of the function can be used, point it out. If the given question lacks the parameters "
    "required by the function, also point it out.\n\n"
    "If you decide to invoke any of the function(s), you MUST put it in the format of "
    "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]\n"
    "You SHOULD NOT include any other text in the response.\n\n"
    "Here is a list of functions in JSON format that you can invoke.\n\n"
)
_TEMPLATE_MARKS = ("[func_name1(", "[func1(")


class Malformed(ValueError):
    """Why a call list is not calls (recorded in ``problems``)."""


def _call(node: ast.expr) -> ToolCall:
    if not isinstance(node, ast.Call):
        raise Malformed("a list item that is not a call")
    if node.args:
        raise Malformed("positional arguments (only name=value is read)")
    try:  # lists only, as vLLM's pythonic parser reads them
        return ToolCall(new_call_id(), pycall.dotted(node.func), pycall.keyword_args(node, tuples=False))
    except ValueError as exc:
        raise Malformed(str(exc)) from None


def parse_list(text: str, bare_call: bool = False) -> list[ToolCall]:
    """The calls in ``[f(a=1), g()]`` (or, ``bare_call``, also one call ``f(a=1)``, as Llama 4
    may write between its python tags); Malformed says why not."""
    if len(text) > _MAX_BLOCK:
        raise Malformed("a call list longer than 64 KiB")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise Malformed(f"not Python call syntax ({type(exc).__name__})") from None
    if bare_call and isinstance(tree, ast.Call):
        return [_call(tree)]
    if not isinstance(tree, ast.List) or not tree.elts:
        raise Malformed("not a list of calls [f(a=1), ...]")
    return [_call(e) for e in tree.elts]


def _blank_after(blank: bool, text: str) -> bool:
    """Whether the line is still blank (spaces and tabs only) after ``text``."""
    i = text.rfind("\n")
    if i >= 0:
        blank, text = True, text[i + 1 :]
    return blank and text.strip(" \t") == ""


@dataclass
class PythonicParser:
    """Feed text deltas; get back the text outside calls, as early as it is safe to emit."""

    calls: list[ToolCall] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _buf: str = ""
    _state: str = "text"  # text; list: inside [...]; tagged: after <|python_start|>
    _blank: bool = True  # the line is blank so far where _buf starts (the output's start is)
    _pos: int = 0  # how far into _buf the list's brackets were scanned
    _depth: int = 0
    _quote: str = ""
    _escape: bool = False

    def feed(self, delta: str) -> str:
        """Take one delta; return the text that is certainly outside any call."""
        self._buf += delta
        out: list[str] = []
        while True:
            if self._state == "text" and not self._scan_text(out):
                return "".join(out)
            if self._state == "list":
                end = self._list_end()
                if end < 0:
                    return "".join(out)
                self._take(self._buf[:end], bare_call=False)
                self._buf = self._buf[end:]
            elif self._state == "tagged":
                j = self._buf.find(END)
                if j < 0:
                    return "".join(out)
                self._take(self._buf[len(START) : j], bare_call=True)
                self._buf = self._buf[j + len(END) :]
            self._state, self._blank = "text", False

    def _scan_text(self, out: list[str]) -> bool:
        """Emit text up to a call's start (True: a call began) or up to what must be held (False)."""
        buf, blank = self._buf, self._blank
        tag = buf.find(START)
        for i, ch in enumerate(buf):
            if i == tag or (ch == "[" and blank):
                if i == tag or _CALL.match(buf, i):
                    self._emit(out, i, blank)
                    self._state = "tagged" if i == tag else "list"
                    self._pos, self._depth, self._quote, self._escape = 0, 0, "", False
                    return True
                if _MAYBE.fullmatch(buf, i):
                    self._emit(out, i, blank)
                    return False
            blank = True if ch == "\n" else blank and ch in " \t"
        self._emit(out, len(buf) - held_suffix(buf, (START,)), None)
        return False

    def _emit(self, out: list[str], i: int, blank: bool | None) -> None:
        text, self._buf = self._buf[:i], self._buf[i:]
        self._blank = _blank_after(self._blank, text) if blank is None else blank
        out.append(text)

    def _list_end(self) -> int:
        """The index just after the bracket that closes the list, or -1 while it is open.
        Strings are skipped (a "]" inside one closes nothing); resumes where it stopped."""
        buf = self._buf
        for k in range(self._pos, len(buf)):
            c = buf[k]
            if self._quote:
                if self._escape:
                    self._escape = False
                elif c == "\\":
                    self._escape = True
                elif c == self._quote:
                    self._quote = ""
            elif c in "\"'":
                self._quote = c
            elif c in "([{":
                self._depth += 1
            elif c in ")]}":
                self._depth -= 1
                if self._depth == 0:
                    return k + 1
        self._pos = len(buf)
        return -1

    def _take(self, block: str, *, bare_call: bool) -> None:
        try:
            self.calls += parse_list(block, bare_call)
        except Malformed as exc:
            self._bad(block, str(exc))

    def _bad(self, block: str, why: str) -> None:
        withhold(self.problems, why, block)

    def finish(self) -> str:
        """The end of the output: a start that never became a call is text; an open list is a
        problem; Llama 4's python block may end with the output instead of its end tag."""
        rest, state = self._buf, self._state
        self._buf, self._state = "", "text"
        if state == "list":
            self._bad(rest, "unterminated: the output ended inside it")
            return ""
        if state == "tagged":
            self._take(rest[len(START) :], bare_call=True)
            return ""
        return rest


def call_list(calls: tuple[ToolCall, ...]) -> str:
    return "[" + ", ".join(pycall.call_text(c.name, c.arguments, json_strings=True) for c in calls) + "]"


def rename_rules(gbnf: str, prefix: str) -> str:
    """``gbnf`` with every rule it defines renamed ``prefix`` + name (references too), so the
    converter's output for several schemas can share one grammar. Literals and character
    classes are left as they are."""
    names = set(re.findall(r"^([a-zA-Z0-9-]+) ::=", gbnf, flags=re.M))
    token = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|[a-zA-Z0-9-]+|.', re.S)
    return "".join(prefix + t if t in names else t for t in token.findall(gbnf))


class Pythonic(ToolFormat):
    name = "pythonic"
    # Its template (vLLM's Llama 3.2 pythonic one) also has Llama 3's marks: it ranks above llama3_json.
    priority = 20
    visible_tokens = (START, END)

    def detect(self, chat_template: str | None, model_name: str) -> bool:
        if chat_template:
            return any(m in chat_template for m in _TEMPLATE_MARKS)
        return re.search(r"llama[-_ .]?4", model_name) is not None

    def parser(self, tools: Tools) -> PythonicParser:
        return PythonicParser()

    def render_tools(self, system: str | None, tools: Tools) -> str:
        fns = [t["function"] for t in tools]
        block = _HEAD + json.dumps(fns, indent=4, ensure_ascii=False)
        return f"{system}\n\n{block}" if system else block

    def render_call_turn(self, message: ChatMessage) -> str:
        calls = call_list(message.tool_calls)
        # A list opens calls only at a line's start: after words it goes on a line of its own.
        return f"{message.content}\n{calls}" if message.content else calls

    def render_tool_result(self, message: ChatMessage) -> str:
        head = f"Result of {message.name}" if message.name else "Result"
        return f"{head}: {message.content}"

    def grammar(self, tools: Tools, to_gbnf: ToGbnf, only: str | None = None) -> CallGrammar | None:
        """A list of calls to the offered tools, each argument one of the tool's parameters
        (``name=`` then a JSON value of its schema: JSON's literals are Python's, and the parser
        reads true/false/null); a tool without ``properties`` takes any keyword with any JSON
        value. The order, repeats and required arguments are not held (the parser and the
        schema check after the run see them). Triggered at the start of the output on ``[`` and
        a tool's name and ``(``: a bracket in prose never triggers. A tool whose name is no
        Python name (``my-tool``) cannot be called in this syntax and is left out; None when
        no tool is left (its calls are then only parsed)."""
        rules: list[str] = []
        calls: list[str] = []
        names: list[str] = []
        for i, t in enumerate(tools):
            fn = t["function"]
            if (only is not None and fn["name"] != only) or not _PY_NAME.fullmatch(fn["name"]):
                continue
            names.append(fn["name"])
            params = fn.get("parameters") or {}
            props = params.get("properties") if isinstance(params, dict) else None
            kvs = []
            if isinstance(props, dict) and props:
                for j, (key, schema) in enumerate(props.items()):
                    if not _PY_NAME.fullmatch(key) or "." in key:
                        continue  # no keyword argument can name it
                    value = schema if isinstance(schema, dict) and schema else _ANY_VALUE
                    rules.append(rename_rules(to_gbnf(value), f"t{i}p{j}-"))
                    kvs.append(f"{json.dumps(key + '=')} t{i}p{j}-root")
            else:
                rules.append(rename_rules(to_gbnf(_ANY_VALUE), f"t{i}any-"))
                kvs.append(f'[A-Za-z_] [A-Za-z0-9_]{{0,63}} "=" t{i}any-root')
            args = f'(t{i}-kv ("," " "? t{i}-kv)*)? ' if kvs else ""
            if kvs:
                rules.append(f"t{i}-kv ::= {' | '.join(kvs)}")
            calls.append(f't{i}-call ::= {json.dumps(fn["name"] + "(")} {args}")"')
        if not names:
            return None
        head = (
            'root ::= "[" call ("," " "? call)* "]" tool-ws\n'
            f"call ::= {' | '.join(c.split(' ::=')[0] for c in calls)}\n"
            f"tool-ws ::= {_WS}\n"
        )
        body = "\n".join(r.strip() for r in [*calls, *rules])
        alts = "|".join(ecma_escape(n) for n in names)
        return CallGrammar(head + body + "\n", (f"^{_WS}(\\[)(?:{alts})\\($",))


FORMAT = Pythonic()
