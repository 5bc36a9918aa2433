"""What the per-family tool-format tests share: a parser run over deltas, and llama.cpp's lazy
sampler for a format's grammar on SmolLM2's vocabulary (the real converter and regex engine)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rkllmd.toolcalls import ToolFormat
from tests.helpers import open_smollm2

FIXTURES = Path(__file__).parent / "fixtures"
#: a tool with a required and an optional parameter, and one of Home Assistant's
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "HassTurnOn",
            "parameters": {"type": "object", "properties": {"name": {"type": "string"}}},
        },
    },
]


def parse(fmt: ToolFormat, tools: Any, deltas: list[str]) -> tuple[str, Any]:
    """The text a parser lets out for ``deltas`` (streamed and at the end), and the parser."""
    p = fmt.parser(tools)
    text = "".join(p.feed(d) for d in deltas) + p.finish()
    return text, p


def calls_of(p: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(c.name, c.arguments) for c in p.calls]


@pytest.fixture(scope="module")
def smol_vocab() -> Iterator[Any]:
    """SmolLM2's vocabulary without its weights."""
    lib = pytest.importorskip("llama_cpp")
    from rkllmd.runtime.llamacpp import embedded_model_path

    if embedded_model_path() is None:
        pytest.skip("embedded model missing")
    llm = lib.Llama(model_path=str(embedded_model_path()), vocab_only=True, verbose=False)
    yield llm
    llm.close()


def allowed_after(llm: Any, fmt: ToolFormat, tools: Any, text: str) -> set[str]:
    """The pieces ``fmt``'s lazy grammar for ``tools`` leaves possible after ``text`` (llama.cpp
    builds it from the real converter's GBNF, so a grammar it cannot read fails here)."""
    import llama_cpp

    from rkllmd.runtime.llamacpp.grammar import LazyGrammar, _gbnf, _lazy_sampler
    from tests.test_llamacpp_toolcalls import allowed

    grammar = fmt.grammar(tools, _gbnf)
    assert grammar is not None
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    sampler = _lazy_sampler(llama_cpp, vocab, LazyGrammar(grammar.gbnf, grammar.triggers))
    for token in llm.tokenize(text.encode(), add_bos=False, special=False):
        llama_cpp.llama_sampler_accept(sampler, token)
    return allowed(llm, sampler)


def smollm2_as(fmt: str) -> Iterator[Any]:
    """The embedded SmolLM2 on llama.cpp, its ``tool_format`` set to ``fmt`` (for a module fixture)."""
    rt = open_smollm2(max_context_len=1024, tool_format=fmt)
    yield rt
    rt.close()


def required_call(rt: Any, tools: Any, question: str) -> tuple[str, str, Any]:
    """One greedy run with a call required: its finish reason, the text outside calls, the parser."""
    from rkllmd.generation import ChatMessage, GenerateInput, Sampling

    inp = GenerateInput(
        (ChatMessage("user", question),), 96, Sampling(temperature=0.0), tuple(tools), "required"
    )
    deltas: list[str] = []
    result = rt.generate(inp, lambda text, _tok: deltas.append(text))
    text, p = parse(rt.tool_format, tools, deltas)
    return result.finish_reason, text, p


def assert_writes_its_call(rt: Any, tools: Any) -> None:
    """tool_choice required on ``rt`` (SmolLM2 on llama.cpp, which has no tool template: rkllmd
    offers the tools in the family's words): it writes a call of the first tool in the family's
    syntax, and the family's parser reads it with nothing left over."""
    finish, text, p = required_call(rt, tools, "What is the weather in Paris?")
    assert finish == "stop" and text.strip() == "" and not p.problems, (text, p.problems)
    assert [c.name for c in p.calls] and all(c.name == tools[0]["function"]["name"] for c in p.calls)
