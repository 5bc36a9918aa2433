"""A tool-call format in one place: its tags, its parser, and the grammar that holds a call.

A runtime with grammars (llama.cpp) asks the format for the GBNF of "one or more calls to the
offered tools" and for the trigger patterns that switch that grammar on once the model opens a
call on its own (a *lazy* grammar); a runtime without grammars only uses the parser. A model
family with another call syntax gets a format of its own here, so the runtimes do not change.
Pure functions and data; the JSON-schema-to-GBNF converter is passed in (llama.cpp's own).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rkllmd.toolcalls.parser import CLOSE, OPEN, HermesParser
from rkllmd.toolcalls.schema import tool_call_schema

#: a JSON schema in, GBNF rules out, with the start rule named ``root`` (llama.cpp's converter)
ToGbnf = Callable[[dict[str, Any]], str]

# Whitespace the grammar allows around the tags and between calls: what Hermes models write
# ("\n"), bounded so a model cannot pad a call with newlines until max_tokens.
_WS = "[ \\t\\n]{0,4}"


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


@dataclass(frozen=True)
class CallFormat:
    """How a model family writes a call: ``open`` + a JSON body + ``close``."""

    name: str
    open: str
    close: str

    def parser(self) -> HermesParser:
        return HermesParser()

    def grammar(
        self, tools: Sequence[dict[str, Any]], to_gbnf: ToGbnf, only: str | None = None
    ) -> CallGrammar:
        """The grammar of the calls to ``tools`` (or to ``only``): the name one of theirs, the
        arguments matching that tool's ``parameters``; after a call only another call or the end.
        ValueError (from ``to_gbnf``) when a schema cannot be expressed."""
        body = re.sub(
            r"^root ::=", "tool-call-body ::=", to_gbnf(tool_call_schema(tools, only)), count=1, flags=re.M
        )
        rules = (
            f"root ::= tool-call (tool-ws tool-call)* tool-ws\n"
            f"tool-call ::= {json.dumps(self.open)} tool-ws tool-call-body tool-ws {json.dumps(self.close)}\n"
            f"tool-ws ::= {_WS}\n"
        )
        # The body is a JSON object whose first key is "name": after the tag, only whitespace,
        # "{" and the key's opening quote are certain to be accepted, whatever the converter's
        # whitespace rules.
        trigger = f'({_ecma_escape(self.open)}){_WS}(?:\\{{"?)?$'
        return CallGrammar(rules + body, (trigger,))


def _ecma_escape(text: str) -> str:
    return re.sub(r"([.^$|()*+?\[\]{}\\/-])", r"\\\1", text)


HERMES = CallFormat("hermes", OPEN, CLOSE)
