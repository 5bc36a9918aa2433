"""The Llama 3.x JSON format's own cases (tests/test_toolformats.py runs the shared contract):
the transcripts Llama 3.1/3.2 write, its template recognised by ``auto``, and its grammar on the
real llama.cpp runtime."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rkllmd import toolcalls
from rkllmd.generation import ChatMessage, GenerateInput, Sampling
from rkllmd.toolcalls.formats.llama3_json import FORMAT as LLAMA3
from tests.toolformat_helpers import FIXTURES, allowed_after, smol_vocab, smollm2_as
from tests.toolformat_helpers import parse as parse_with

__all__ = ["smol_vocab"]  # a fixture, used by name

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                "required": ["city"],
            },
        },
    }
]
# The lines of Llama 3.2-Instruct's chat template that say how it offers tools and writes calls.
LLAMA32_TEMPLATE = (
    '{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n'
    '{%- if tools is not none %}\n    {{- "Environment: ipython\\n" }}\n{%- endif %}\n'
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    "{{- '{\"name\": \"' + tool_call.name + '\", ' }}\n{{- '\"parameters\": ' }}\n"
    '{{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}\n'
)


def parse(deltas: list[str]) -> tuple[str, Any]:
    return parse_with(LLAMA3, TOOLS, deltas)


@pytest.mark.parametrize(
    "output",
    [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '\n\n{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '{ "name" : "get_weather", "parameters": "{\\"city\\": \\"Paris\\"}"}',
    ],
)
def test_what_llama_writes_is_a_call(output: str) -> None:
    """A bare JSON answer, after whitespace or the python tag, ``parameters`` or ``arguments``
    (also as a JSON string), one character at a time: one call, no text."""
    text, p = parse(list(output))
    assert text == "" and [(c.name, c.arguments) for c in p.calls] == [("get_weather", {"city": "Paris"})]


def test_calls_joined_by_semicolons_are_each_a_call() -> None:
    paris, rome = (f'{{"name": "get_weather", "parameters": {{"city": "{c}"}}}}' for c in ("Paris", "Rome"))
    out = f"{paris}; {rome}"
    text, p = parse([out])
    assert text == "" and [c.arguments["city"] for c in p.calls] == ["Paris", "Rome"] and not p.problems


@pytest.mark.parametrize(
    "output",
    ['{"temperature": 18}', 'It is sunny. {"name": "x"}', "{curly} braces", '  {"nam', "Use `{}`."],
)
def test_json_or_braces_that_are_no_call_stay_text(output: str) -> None:
    """A JSON answer that is not a call, a brace after words, or a start cut short is text."""
    text, p = parse(list(output))
    assert text == output and not p.calls and not p.problems


@pytest.mark.parametrize(
    "output",
    [
        '{"name": "get_weather", "parameters": {"city": }}',
        '<|python_tag|>brave_search.call(query="x")',
        '{"name": "get_weather", "parameters": [1]}',
        '{"name": "get_weather", "parameters": {"level": 1e999}}',
        '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_w',
    ],
)
def test_a_malformed_call_is_withheld_and_recorded(output: str) -> None:
    """Broken JSON, a built-in tool's Python, non-object parameters, a number no reply can carry,
    a second call cut off: withheld (never spoken), the reason recorded."""
    text, p = parse([output])
    assert text == "" and p.problems


def test_text_before_the_python_tag_streams_at_once() -> None:
    p = LLAMA3.parser(TOOLS)
    assert p.feed("Let me check. <|py") == "Let me check. "
    assert p.feed('thon_tag|>{"name": "get_weather", "parameters": {"city": "Rome"}}') == ""
    assert p.finish() == "" and p.calls[0].arguments == {"city": "Rome"}


def test_auto_recognises_llama_by_template_and_by_name() -> None:
    """Llama 3.2's template is Llama JSON; Qwen2.5's stays Hermes; a Hermes-3 Llama fine-tune whose
    template writes <tool_call> is Hermes although its name says Llama; by name alone, Llama 3."""
    qwen = (FIXTURES / "qwen2.5-instruct.jinja").read_text()
    assert toolcalls.choose("auto", LLAMA32_TEMPLATE, "model.gguf").name == "llama3_json"
    assert toolcalls.choose("auto", qwen, "llama-3.2-1b.gguf").name == "hermes"
    assert toolcalls.choose("auto", None, "Llama-3.2-1B-Instruct_W8A8_RK3588.rkllm").name == "llama3_json"
    assert toolcalls.choose("auto", None, "Hermes-3-Llama-3.1-8B").name == "llama3_json"
    assert toolcalls.choose("auto", "<tool_call>", "Hermes-3-Llama-3.1-8B").name == "hermes"


def test_rkllm_auto_reads_the_model_name(make_rkllm: Any) -> None:
    """On RKLLM, with no template to read, the model's file name decides."""
    assert make_rkllm("Llama-3.2-1B-Instruct.rkllm").tool_format.name == "llama3_json"
    assert make_rkllm("Qwen2.5-1.5B-Instruct.rkllm").tool_format.name == "hermes"
    assert make_rkllm("Llama-3.2-1B-Instruct.rkllm", tool_format="hermes").tool_format.name == "hermes"


@pytest.fixture
def make_rkllm(tmp_path: Path) -> Any:
    from rkllmd.runtime.rkllm.runtime import RkllmRuntime
    from rkllmd.runtime.rkllm.settings import RkllmModelSettings, RkllmSettings

    def make(file: str, **kw: Any) -> RkllmRuntime:
        (tmp_path / file).write_bytes(b"model")
        cfg = RkllmModelSettings(runtime="rkllm", path=tmp_path / file, **kw)
        return RkllmRuntime("m", cfg, RkllmSettings())

    return make


@pytest.fixture(scope="module")
def smollm2_llama3() -> Iterator[Any]:
    """The embedded SmolLM2 told to write Llama JSON calls."""
    yield from smollm2_as("llama3_json")


def generate(rt: Any, choice: str) -> tuple[str, Any]:
    inp = GenerateInput(
        (ChatMessage("user", "What is the weather in Rome?"),),
        80,
        Sampling(temperature=0.0),
        tuple(TOOLS),
        choice,
    )
    deltas: list[str] = []
    result = rt.generate(inp, lambda text, _tok: deltas.append(text))
    text, p = parse(deltas)
    return result.finish_reason, (text, p)


@pytest.mark.model
def test_llamacpp_grammar_makes_a_llama_json_call(smollm2_llama3: Any) -> None:
    """tool_choice required on llama.cpp with this format: the output is a Llama JSON call of the
    offered tool, and the prompt offered the tools in Llama's wording."""
    assert smollm2_llama3.describe()["tool_format"] == "llama3_json"
    prompt = smollm2_llama3.render(GenerateInput((ChatMessage("user", "hi"),), 8, tools=tuple(TOOLS)))
    assert '"parameters": dictionary of argument name' in prompt
    finish, (text, p) = generate(smollm2_llama3, "required")
    assert finish == "stop" and text.strip() == "" and not p.problems
    assert [c.name for c in p.calls] == ["get_weather"] and p.calls[0].arguments["city"] in ("Paris", "Rome")


@pytest.mark.model
def test_llamacpp_lazy_trigger_runs_and_leaves_the_answer_parseable(smollm2_llama3: Any) -> None:
    """tool_choice auto: the start-anchored trigger is accepted by llama.cpp's regex engine, and
    whatever the model writes ends as a call or as text, never as a problem."""
    finish, (text, p) = generate(smollm2_llama3, "auto")
    assert finish in ("stop", "length") and not p.problems
    assert p.calls or text.strip()


def test_the_grammar_takes_over_only_at_the_start_of_the_output(smol_vocab: Any) -> None:
    """An output opening with ``{"`` is held to a call from there (only ``name`` may follow);
    the same characters after words leave the text free (llama.cpp's regex honours the anchor)."""
    assert allowed_after(smol_vocab, LLAMA3, TOOLS, '{"') == {"n", "na", "nam", "name"}
    assert len(allowed_after(smol_vocab, LLAMA3, TOOLS, 'Sure: {"')) > 40000
