"""What a tool-call format is: the interface every module in ``rkllmd/toolcalls/formats/`` fills in.

A format is how one model family writes its calls and reads its tools: a streaming parser for
the calls in its output, the text of tools, call turns and tool results for runtimes that do not
render them through the model's own template, the grammar (GBNF and lazy trigger) that keeps a
started call well formed on llama.cpp, and how to recognise the family from its chat template or
name (``tool_format = "auto"``). The runtimes and the loop only ever talk to this interface, so a
new family is one new module (docs/ARCHITECTURE.md, "Adding a tool-call format").

Data and pure functions (``withhold`` also logs). The parser runs on the token sink's thread,
one parser per generation; rendering and grammars run on the inference thread.
"""

from __future__ import annotations

import abc
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from rkllmd import logface

if TYPE_CHECKING:
    from rkllmd.generation import ChatMessage, ToolCall

log = logface.get_logger("rkllmd.toolcalls")

#: a JSON schema in, GBNF rules out, with the start rule named ``root`` (llama.cpp's converter)
ToGbnf = Callable[[dict[str, Any]], str]
#: the tools of one request, OpenAI-shaped (``{"type": "function", "function": {...}}``), checked
Tools = Sequence[dict[str, Any]]


@dataclass(frozen=True)
class CallGrammar:
    """GBNF whose ``root`` is one or more calls, and the patterns that start it lazily.

    ``triggers`` are ECMAScript regexes (std::regex, as llama.cpp runs them) searched in the
    output so far after each token; the grammar is fed the output from the first group on. Each
    one only matches output ending in a prefix the grammar accepts: llama.cpp replays the
    matched text into the grammar, and a replayed piece the grammar rejects aborts the process.
    """

    gbnf: str
    triggers: tuple[str, ...]


class CallParser(Protocol):
    """The calls in one generation's output, taken out of its text as it streams.

    The contract every format's parser keeps (tests/test_toolformats.py checks it for each):
    text outside calls is never lost and never reordered; while streaming, only what could still
    become call markup is held back (and ``finish`` returns what turned out not to be); call
    markup never comes out as text; a malformed or unterminated call is withheld and the reason
    appended to ``problems`` with a warning logged (the loop then answers ``invalid_output`` when
    no call came; docs/TOOLS.md says why). Each call gets a fresh ``call_<hex>`` id.
    """

    calls: list[ToolCall]
    problems: list[str]

    def feed(self, delta: str) -> str:
        """Take one delta; return the text that is certainly outside any call."""
        ...

    def finish(self) -> str:
        """The end of the output: what was held and is not a call; an open call is a problem."""
        ...


class ToolFormat(abc.ABC):
    """One model family's tool-call conventions. A module in ``formats/`` sets ``FORMAT`` to one."""

    #: what ``tool_format = "<name>"`` in a ``[models.X]`` table names
    name: ClassVar[str]
    #: the order ``auto`` asks the formats in, highest first: a format whose template also
    #: matches a more general one's ``detect`` (Qwen3-Coder's XML inside ``<tool_call>``) ranks
    #: above it; ties go by name
    priority: ClassVar[int] = 0
    #: special tokens of the call syntax (``<|python_tag|>``, ``[TOOL_CALLS]``) that a runtime
    #: must put in the text it streams, where it would otherwise drop control tokens (llama.cpp)
    visible_tokens: ClassVar[tuple[str, ...]] = ()

    @abc.abstractmethod
    def detect(self, chat_template: str | None, model_name: str) -> bool:
        """Whether a model is of this family, asked twice by ``auto``: first with its chat
        template's text alone (the GGUF's on llama.cpp, the configured one on RKLLM; the name
        empty), then, if no format knew the template, with its names alone (the config's and the
        model file's, lower case; the template None)."""

    @abc.abstractmethod
    def parser(self, tools: Tools) -> CallParser:
        """A fresh parser for one generation offered ``tools`` (formats whose arguments are not
        JSON read the parameters' types from them)."""

    @abc.abstractmethod
    def render_tools(self, system: str | None, tools: Tools) -> str:
        """The system prompt offering ``tools``: ``system`` (if any) with the family's tool
        section, for a runtime whose template does not render tools itself."""

    @abc.abstractmethod
    def render_call_turn(self, message: ChatMessage) -> str:
        """An earlier assistant turn as text: its content, then its calls as the model writes them."""

    @abc.abstractmethod
    def render_tool_result(self, message: ChatMessage) -> str:
        """One ``role: tool`` message as the family reads a result (the runtime puts it in a user
        turn, or the role its template has for results)."""

    def template_call_id(self, call_id: str) -> str:
        """A call's id as the model's own chat template sees it where the runtime renders earlier
        turns through it (llama.cpp): unchanged, unless the family's templates refuse some ids
        (Mistral's take 9 letters and digits only). A call and its result map alike."""
        return call_id

    def grammar(self, tools: Tools, to_gbnf: ToGbnf, only: str | None = None) -> CallGrammar | None:
        """The grammar of one or more calls to ``tools`` (or to ``only``) and its lazy triggers,
        or None where the format has none (its calls are then only parsed, as on RKLLM).
        ValueError (from ``to_gbnf``) when a schema cannot be expressed."""
        return None


# --- helpers a format may use ---------------------------------------------------------------


def held_suffix(text: str, tags: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of one of ``tags`` (it
    could still become that tag, so a streaming parser holds it back).

    Runs per token: only positions holding a tag's first character are tried, left to right
    (the longest candidate first), so text without one costs a single ``find`` per tag."""
    best, n = 0, len(text)
    for tag in tags:
        i = text.find(tag[0], max(0, n - len(tag) + 1))
        while i >= 0:
            if tag.startswith(text[i:]):
                best = max(best, n - i)
                break
            i = text.find(tag[0], i + 1)
    return best


def withhold(problems: list[str], why: str, text: str) -> None:
    """Record why a call block is withheld (a parser's ``problems``) and log it with the block's start."""
    problems.append(why)
    log.warning("malformed tool call withheld", why=why, text=text[:200])


def offered(tools: Tools, only: str | None) -> Iterator[tuple[int, dict[str, Any], dict[str, Any]]]:
    """The tools a call grammar admits (all, or only the one named ``only``), each with its
    index in ``tools`` (rule names carry it), its function and its parameters' properties."""
    for i, t in enumerate(tools):
        fn = t.get("function", {})
        if only is None or fn.get("name") == only:
            yield i, fn, (fn.get("parameters") or {}).get("properties") or {}


def keyword_call_rules(
    i: int,
    head: str,
    props: dict[str, Any],
    value_rule: Callable[[Any], str],
    *,
    key_end: str,
    sep: str,
    close: str,
) -> list[str]:
    """GBNF rules ``fn-<i>`` of one call written ``head`` (the name and its opening), then
    ``key<key_end>value`` arguments in any order with ``sep`` (GBNF) between them, each a
    parameter of ``props`` whose value follows ``value_rule(schema)``, then ``close`` (GBNF)."""
    opening = json.dumps(head, ensure_ascii=False)
    if not props:
        return [f"fn-{i} ::= {opening} {close}"]
    alts = " | ".join(
        f"{json.dumps(k + key_end, ensure_ascii=False)} {value_rule(v)}" for k, v in props.items()
    )
    return [f"fn-{i} ::= {opening} (fn-{i}-p ({sep} fn-{i}-p)*)? {close}", f"fn-{i}-p ::= {alts}"]


def ecma_escape(text: str) -> str:
    """``text`` as a literal in an ECMAScript regex (a lazy trigger)."""
    return re.sub(r"([.^$|()*+?\[\]{}\\/-])", r"\\\1", text)


def tagged_json_grammar(
    open_tag: str,
    close_tag: str,
    body_schema: dict[str, Any],
    to_gbnf: ToGbnf,
    ws: str,
    body_start: str = '{"',
) -> CallGrammar:
    """The grammar of calls written ``open_tag`` + a JSON body matching ``body_schema`` +
    ``close_tag`` (none when empty: Mistral's ``[TOOL_CALLS][...]``), one or more with ``ws``
    between them, triggered at ``open_tag``.

    ``body_start`` is what the body certainly begins with whatever the converter's whitespace
    rules: ``{"`` for an object whose first key is quoted, ``[{"`` for a list of them. The
    trigger accepts the tag, ``ws`` and any prefix of it, and nothing more.
    """
    body = re.sub(r"^root ::=", "tool-call-body ::=", to_gbnf(body_schema), count=1, flags=re.M)
    close = f" tool-ws {json.dumps(close_tag)}" if close_tag else ""
    rules = (
        f"root ::= tool-call (tool-ws tool-call)* tool-ws\n"
        f"tool-call ::= {json.dumps(open_tag)} tool-ws tool-call-body{close}\n"
        f"tool-ws ::= {ws}\n"
    )
    trigger = f"({ecma_escape(open_tag)}){ws}{optional_prefixes(body_start)}$"
    return CallGrammar(rules + body, (trigger,))


def optional_prefixes(text: str) -> str:
    """An ECMAScript regex matching any prefix of ``text``, the empty one included:
    ``{"`` gives ``(?:\\{(?:")?)?``."""
    out = ""
    for ch in reversed(text):
        out = f"(?:{ecma_escape(ch)}{out})?"
    return out
