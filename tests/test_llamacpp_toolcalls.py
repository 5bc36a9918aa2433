"""Tool calls on llama.cpp with the real SmolLM2: once the model opens a call, a lazy grammar holds
the rest to a valid call of an offered tool; before that, and without a call, the text is free.

The prompt is the HA-shaped one of the ha_turn benchmark (rkllmd/bench/haturn.py: HA's
instructions, 36 exposed entities, HA's 11 intent tools), about 2,000 tokens, evaluated once for
the module (the later turns reuse it from the KV cache). Greedy sampling, so each case is the
same every run; the phrasings are ones where SmolLM2 left alone writes a call to a tool that was
not offered, or one that never closes.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator
from typing import Any

import pytest

from rkllmd.bench import haturn
from rkllmd.generation import ChatMessage, GenerateInput, Sampling
from rkllmd.runtime.llamacpp import embedded_model_path
from rkllmd.runtime.llamacpp import runtime as llamacpp
from rkllmd.runtime.llamacpp.grammar import LazyGrammar, _gbnf, _lazy_sampler
from rkllmd.runtime.llamacpp.runtime import LlamaCppRuntime
from rkllmd.toolcalls import validate
from rkllmd.toolcalls.formats.hermes import FORMAT as HERMES
from rkllmd.toolcalls.formats.hermes import HermesParser
from tests.helpers import open_smollm2

pytestmark = pytest.mark.model

TOOLS = haturn.tools()
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def rt() -> Iterator[LlamaCppRuntime]:
    runtime = open_smollm2(max_context_len=4096)
    yield runtime
    runtime.close()


def turn(rt: LlamaCppRuntime, question: str, max_tokens: int = 96) -> tuple[str, str]:
    """The model's raw output (markup included, as the runtime hands it to the parser) and finish."""
    msgs = (ChatMessage("system", haturn.system_prompt()), ChatMessage("user", question))
    inp = GenerateInput(msgs, max_tokens, Sampling(temperature=0.0), tuple(TOOLS))
    deltas: list[str] = []
    result = rt.generate(inp, lambda text, _tok: deltas.append(text))
    return "".join(deltas), result.finish_reason


@pytest.mark.parametrize("question", ["Turn on the kitchen ceiling light", "switch off the office lamp"])
def test_an_opened_call_is_a_valid_call_of_an_offered_tool(rt: LlamaCppRuntime, question: str) -> None:
    """Whatever the model opens with <tool_call> ends as a call: an offered tool's name, arguments
    matching its parameters, then the end of the output (SmolLM2 alone: 'switchOff', or a call
    that runs on into more JSON and never closes)."""
    raw, finish = turn(rt, question)
    parser = HermesParser()
    text = parser.feed(raw) + parser.finish()
    assert "<tool_call>" in raw and finish == "stop", raw
    assert parser.malformed == 0 and parser.calls and text.strip() == "", raw
    for call in parser.calls:
        assert call.name in SCHEMAS, raw
        assert validate(call.arguments, SCHEMAS[call.name]) == [], raw


def test_without_a_call_the_text_stays_free(rt: LlamaCppRuntime) -> None:
    """The grammar waits for the tag: an answer in words is not forced into a call."""
    raw, _ = turn(rt, "What is the capital of France? Answer in one word.", max_tokens=16)
    assert "<tool_call>" not in raw and raw.strip()


# --- the lazy sampler token by token (SmolLM2's vocabulary only, no weights) --------------------


@pytest.fixture(scope="module")
def vocab() -> Iterator[Any]:
    lib = pytest.importorskip("llama_cpp")
    if embedded_model_path() is None:
        pytest.skip(f"embedded model missing: {llamacpp.INSTALL_EMBEDDED}")
    llm = lib.Llama(model_path=str(embedded_model_path()), vocab_only=True, verbose=False)
    yield llm
    llm.close()


def lazy_after(llm: Any, text: str) -> tuple[Any, list[str]]:
    """The lazy sampler of HA's tools after accepting ``text`` token by token, and the pieces."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    grammar = HERMES.grammar(TOOLS, _gbnf)
    sampler = _lazy_sampler(llama_cpp, vocab, LazyGrammar(grammar.gbnf, grammar.triggers))
    tokens = llm.tokenize(text.encode(), add_bos=False, special=False)
    for token in tokens:
        llama_cpp.llama_sampler_accept(sampler, token)
    return sampler, [llm.detokenize([t]).decode() for t in tokens]


def allowed(llm: Any, sampler: Any) -> set[str]:
    """The pieces the sampler leaves possible next."""
    import llama_cpp

    n = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(llm.model))
    data = (llama_cpp.llama_token_data * n)(*(llama_cpp.llama_token_data(i, 0.0, 0.0) for i in range(n)))
    cands = llama_cpp.llama_token_data_array(data, n, -1, False)
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(cands))
    out = {
        llm.detokenize([data[i].id]).decode("utf-8", "replace")
        for i in range(n)
        if not math.isinf(data[i].logit)
    }
    llama_cpp.llama_sampler_free(sampler)
    return out


def test_the_grammar_takes_over_at_the_tag_mid_text(vocab: Any) -> None:
    """Free text, then the tag split over tokens (' <' carries a space before it): from there only
    the call's JSON may follow."""
    sampler, pieces = lazy_after(vocab, 'Sure. <tool_call>\n{"')
    assert pieces[2:7] == [" <", "tool", "_", "call", ">"]
    assert allowed(vocab, sampler) == {"n", "na", "nam", "name"}


@pytest.mark.parametrize("after", [", ok", ".", '"', ")"])
def test_a_tag_fused_with_what_follows_leaves_the_text_free(vocab: Any, after: str) -> None:
    """SmolLM2 has tokens such as '>,' and '>.': text after the tag that the grammar would refuse
    does not trigger it (replaying it would abort the process); the output stays unconstrained."""
    sampler, pieces = lazy_after(vocab, "<tool_call>" + after)
    assert pieces[4].startswith(">") and len(pieces[4]) > 1
    assert len(allowed(vocab, sampler)) > 40000
