"""The Phi-4-mini format's own cases (tests/test_toolformats.py runs the shared contract): the
``functools[...]`` calls Phi-4-mini-instruct writes (the form vLLM's ``phi4_mini_json`` parser
reads), the word in prose, its template recognised by ``auto``, and its grammar in llama.cpp.

Template: tests/fixtures/README.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from rkllmd import toolcalls
from rkllmd.generation import ChatMessage
from rkllmd.toolcalls.formats.phi4_mini import FORMAT as PHI
from tests.toolformat_helpers import (
    FIXTURES,
    allowed_after,
    assert_writes_its_call,
    calls_of,
    parse,
    smol_vocab,
    smollm2_as,
)

__all__ = ["smol_vocab"]  # a fixture, used by name

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather_updates",
            "description": "Fetches weather updates for a given city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
PARIS = ("get_weather_updates", {"city": "Paris"})
LONDON = ("get_weather_updates", {"city": "London"})


@pytest.mark.parametrize(
    ("output", "calls"),
    [
        ('functools[{"name": "get_weather_updates", "arguments": {"city": "Paris"}}]', [PARIS]),
        (
            'functools[{"name": "get_weather_updates", "arguments": {"city": "Paris"}}, '
            '{"name": "get_weather_updates", "arguments": {"city": "London"}}]',
            [PARIS, LONDON],
        ),
        ('functools[{"name": "get_weather_updates", "parameters": {"city": "Paris"}}]', [PARIS]),
        ('functools[{"name": "get_weather_updates", "arguments": "{\\"city\\": \\"Paris\\"}"}]', [PARIS]),
        ('\nfunctools[\n  {"name": "get_weather_updates", "arguments": {"city": "Paris"}}\n]', [PARIS]),
    ],
)
def test_what_phi4_mini_writes_is_calls(output: str, calls: list[Any]) -> None:
    """One character at a time and whole: the calls, no markup in the text."""
    for deltas in (list(output), [output]):
        text, p = parse(PHI, TOOLS, deltas)
        assert calls_of(p) == calls and not p.problems and text.strip() == ""


@pytest.mark.parametrize(
    "output",
    [
        "Python's functools module has lru_cache.",
        "Use functools.partial([1, 2]) here",
        "functools",
        "my_functools[0] is a list item",
    ],
)
def test_the_word_in_prose_is_text(output: str) -> None:
    """``functools`` not followed by ``[`` stays text, whole; held only while it could still be."""
    text, p = parse(PHI, TOOLS, list(output))
    assert text == output and not p.calls and not p.problems


def test_text_before_the_marker_streams_at_once() -> None:
    p = PHI.parser(TOOLS)
    assert p.feed("Checking the weather. functo") == "Checking the weather. "
    assert p.feed('ols[{"name": "get_weather_updates", "arguments": {"city": "Paris"}}] ok') == ""
    assert p.finish() == " ok" and calls_of(p) == [PARIS]


@pytest.mark.parametrize(
    "output",
    [
        'functools[{"name": "get_weather_updates", "arguments": {"city": }}]',
        'functools[{"name": "get_weather_updates", "arguments": {"city": "Paris"}}',
        "functools[]",
        'functools[{"city": "Paris"}]',
        'functools[{"name": "get_weather_updates", "arguments": {"days": 1e999}}]',
    ],
)
def test_a_malformed_call_is_withheld_and_recorded(output: str) -> None:
    text, p = parse(PHI, TOOLS, [output])
    assert text == "" and not p.calls and p.problems


def test_tools_go_between_the_tool_tokens_and_results_after_tool_response() -> None:
    """As the model card shows: the system message, then the tools' JSON list in ``<|tool|>``."""
    text = PHI.render_tools("You are a helpful assistant with some tools.", TOOLS)
    assert text.startswith("You are a helpful assistant with some tools.<|tool|>") and text.endswith(
        "<|/tool|>"
    )
    listed = json.loads(text.split("<|tool|>")[1].removesuffix("<|/tool|>"))
    assert listed == [TOOLS[0]["function"]]
    result = PHI.render_tool_result(ChatMessage("tool", '{"temp": 18}', tool_call_id="c"))
    assert result == '<|tool_response|>{"temp": 18}'


def test_auto_recognises_phi4_mini_by_template_and_by_name() -> None:
    template = (FIXTURES / "phi-4-mini-instruct.jinja").read_text()
    assert toolcalls.choose("auto", template, "model.gguf").name == "phi4_mini"
    assert toolcalls.choose("auto", None, "Phi-4-mini-instruct-Q4_K_M.gguf").name == "phi4_mini"
    assert toolcalls.choose("auto", None, "phi4-mini_w8a8_rk3588.rkllm").name == "phi4_mini"
    assert toolcalls.choose("auto", None, "phi-3.5-mini").name == "hermes"


def test_the_grammar_holds_the_list_once_it_has_begun(smol_vocab: Any) -> None:
    """On llama.cpp: after ``functools[`` only a call object may follow, its name an offered
    tool's; the word alone, and text before it, stay free."""
    assert allowed_after(smol_vocab, PHI, TOOLS, "functools[") <= {" ", " {", ' {"', "{", '{"'}
    after_name = allowed_after(smol_vocab, PHI, TOOLS, 'functools[{"name": "')
    assert after_name and all("get_weather_updates".startswith(p) for p in after_name)
    assert len(allowed_after(smol_vocab, PHI, TOOLS, "I like functools")) > 40000


@pytest.fixture(scope="module")
def smollm2() -> Iterator[Any]:
    yield from smollm2_as("phi4_mini")


@pytest.mark.model
def test_llamacpp_grammar_makes_the_model_write_this_familys_call(smollm2: Any) -> None:
    """tool_choice required on llama.cpp: SmolLM2 (no tool template: rkllmd offers the tools in
    this family's words) writes a call in this family's syntax, and the parser reads it."""
    assert smollm2.describe()["tool_format"] == "phi4_mini"
    assert_writes_its_call(smollm2, TOOLS)
