"""Tool calls on llama.cpp with the real SmolLM2: once the model opens a call, a lazy grammar holds
the rest to a valid call of an offered tool; before that, and without a call, the text is free.

The prompt is the HA-shaped one of the ha_turn benchmark (rkllmd/bench/haturn.py: HA's
instructions, 36 exposed entities, HA's 11 intent tools), about 2,000 tokens, evaluated once for
the module (the later turns reuse it from the KV cache). Greedy sampling, so each case is the
same every run; the phrasings are ones where SmolLM2 left alone writes a call to a tool that was
not offered, or one that never closes.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rkllmd.bench import haturn
from rkllmd.runtime.base import ChatMessage, GenerateInput, Sampling
from rkllmd.runtime.llamacpp import embedded_model_path
from rkllmd.runtime.llamacpp import runtime as llamacpp
from rkllmd.runtime.llamacpp.runtime import LlamaCppRuntime
from rkllmd.runtime.llamacpp.settings import LlamaCppModelSettings
from rkllmd.toolcalls import HermesParser, validate

pytestmark = pytest.mark.model

TOOLS = haturn.tools()
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}


@pytest.fixture(scope="module")
def rt() -> Iterator[LlamaCppRuntime]:
    pytest.importorskip("llama_cpp")
    if embedded_model_path() is None:
        pytest.skip(f"embedded model missing: {llamacpp.INSTALL_EMBEDDED}")
    cfg = LlamaCppModelSettings.model_validate(
        {"runtime": "llamacpp", "max_context_len": 4096, "n_threads": 2}
    )
    runtime = LlamaCppRuntime("smollm2", cfg)
    runtime.open()
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
