"""The Gemma 4 format's own cases (tests/test_toolformats.py runs the shared contract): the calls
Google documents and Gemma 4's template renders, typed values and strings between ``<|"|>``
tokens, malformed blocks, ``auto`` on its template and names, and its tool declarations.

The format is from ai.google.dev ("Gemma 4 prompt formatting": the six tool tokens and the
``<|"|>`` string delimiter; "Function calling with Gemma 4"). tests/fixtures/gemma4.jinja is the
chat template llama.cpp keeps for Gemma 4 (models/templates/gemma4.jinja at llama.cpp commit
75f1ba73); the one in Google's Hugging Face repositories was not reachable here.
"""

from __future__ import annotations

from typing import Any

import pytest
import structlog

from rkllmd import toolcalls
from rkllmd.toolcalls.formats.gemma4 import FORMAT as GEMMA4
from tests.chat_templates import render
from tests.toolformat_helpers import FIXTURES, allowed_after, calls_of, smol_vocab
from tests.toolformat_helpers import parse as parse_with

__all__ = ["smol_vocab"]  # a fixture, used by name

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_current_temperature",
            "description": "Gets the current temperature for a given location.",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city name, e.g. San Francisco"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer"},
                },
                "required": ["location"],
            },
        },
    }
]
# Google's example call, as the model writes it.
LONDON = '<|tool_call>call:get_current_temperature{location:<|"|>London<|"|>}<tool_call|>'


def parse(deltas: list[str]) -> tuple[str, Any]:
    return parse_with(GEMMA4, TOOLS, deltas)


def test_googles_example_call_split_at_every_position() -> None:
    for cut in range(1, len(LONDON)):
        text, p = parse([LONDON[:cut], LONDON[cut:]])
        assert text == "" and calls_of(p) == [("get_current_temperature", {"location": "London"})], cut


def test_parallel_calls_back_to_back_after_text() -> None:
    out = "Checking both.\n" + LONDON + LONDON.replace("London", "Paris")
    text, p = parse(list(out))
    assert text == "Checking both.\n" and not p.problems
    assert [c.arguments["location"] for c in p.calls] == ["London", "Paris"]


def test_values_of_every_kind_and_strings_holding_syntax() -> None:
    """Numbers, booleans, null, lists, nested objects with bare keys; a string between ``<|"|>``
    keeps braces, commas, colons and quotes as text; quoted keys and JSON strings read too."""
    out = (
        '<|tool_call>call:get_current_temperature{location:<|"|>Paris, "TX" {US}: yes<|"|>,'
        'days:3,hourly:true,lat:-48.5e0,none:null,tags:[<|"|>a<|"|>,2,[]],'
        'where:{zip:<|"|>75460<|"|>,<|"|>odd key<|"|>:"json \\"s\\""}}<tool_call|>'
    )
    text, p = parse(list(out))
    assert text == "" and not p.problems
    assert calls_of(p) == [
        (
            "get_current_temperature",
            {
                "location": 'Paris, "TX" {US}: yes',
                "days": 3,
                "hourly": True,
                "lat": -48.5,
                "none": None,
                "tags": ["a", 2, []],
                "where": {"zip": "75460", "odd key": 'json "s"'},
            },
        )
    ]


@pytest.mark.parametrize(
    "output",
    [
        '<|tool_call>call:get_current_temperature{location:<|"|>London}<tool_call|>',
        "<|tool_call>call:get_current_temperature{location:London}<tool_call|>",
        '<|tool_call>get_current_temperature{location:<|"|>London<|"|>}<tool_call|>',
        '<|tool_call>call:get_current_temperature{location:<|"|>London<|"|>} and more<tool_call|>',
        "<|tool_call>call:get_current_temperature{days:1e999}<tool_call|>",
        '<|tool_call>call:get_current_temperature{location:<|"|>Lon',
    ],
    ids=["string-unclosed", "bare-word", "no-call-prefix", "trailing-text", "infinite", "cut-off"],
)
def test_a_malformed_call_is_withheld_and_recorded(output: str) -> None:
    with structlog.testing.capture_logs() as logs:
        text, p = parse(list(output))
    assert text == "" and not p.calls and p.problems
    assert any(e["event"] == "malformed tool call withheld" for e in logs)


def test_the_templates_own_rendering_of_calls_parses_back() -> None:
    """A model turn as the real template renders it (two calls, keys sorted, nested values)
    reads back as the same calls, and rkllmd renders the turn as the template does."""
    args = [{"location": "Paris", "days": 2, "opts": {"a": True, "b": [1, "x"]}}, {"location": "Rome"}]
    tool_calls = [{"function": {"name": "get_current_temperature", "arguments": a}} for a in args]
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "", "tool_calls": tool_calls},
    ]
    prompt = render("gemma4.jinja", messages, tools=TOOLS)
    turn = prompt.split("<|turn>model\n", 1)[1].split("<turn|>")[0]
    text, p = parse(list(turn))
    assert text == "" and calls_of(p) == [("get_current_temperature", a) for a in args]
    from rkllmd.generation import ChatMessage

    assert GEMMA4.render_call_turn(ChatMessage("assistant", "", tuple(p.calls))) == turn


def test_tools_are_declared_as_the_template_declares_them() -> None:
    """The system turn rkllmd writes for a runtime that does not render tools is the template's."""
    system = "You run a smart home."
    prompt = render(
        "gemma4.jinja",
        [{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
        tools=TOOLS,
    )
    head = "<bos><|turn>system\n"
    assert prompt.startswith(head)
    assert GEMMA4.render_tools(system, TOOLS) == prompt[len(head) :].split("<turn|>")[0]


def test_its_control_tokens_are_streamed_as_text() -> None:
    """llama.cpp drops control tokens from the text unless told: the tags and the string
    delimiter are all needed to read a call."""
    assert set(GEMMA4.visible_tokens) == {"<|tool_call>", "<tool_call|>", '<|"|>'}


def test_auto_recognises_gemma4_by_template_and_name() -> None:
    template = (FIXTURES / "gemma4.jinja").read_text()
    assert toolcalls.choose("auto", template, "model.gguf").name == "gemma4"
    for name in ("gemma-4-E2B-it_w8a8_rk3588.rkllm", "gemma4:e4b", "google_gemma-4-31B-it-Q4_K_M.gguf"):
        assert toolcalls.choose("auto", None, name).name == "gemma4", name
    for name in ("gemma-3-4b-it.rkllm", "medgemma-4b-it.gguf"):
        assert toolcalls.choose("auto", None, name).name != "gemma4", name


# --- the grammar on the real llama.cpp (SmolLM2's vocabulary, which spells the tokens out) -------


START = "Sure. <|tool_call>call:"


def test_the_grammar_holds_a_started_call_to_its_tool_parameters_and_types(smol_vocab: Any) -> None:
    """From <|tool_call> on: the offered tool's name, its parameters, an enum's strings, digits
    for an integer, a string's delimiter; inside a string, any text."""

    def after(text: str) -> set[str]:
        return allowed_after(smol_vocab, GEMMA4, TOOLS, START + text)

    assert all("get_current_temperature{".startswith(p) for p in after(""))
    keys = after("get_current_temperature{")
    assert keys and all(any(k.startswith(p) for k in ("location:", "unit:", "days:", "}")) for p in keys)
    assert all(p[0] in "-0123456789" for p in after("get_current_temperature{days:"))
    unit = after("get_current_temperature{unit:")
    assert unit and all('<|"|>celsius'.startswith(p) or '<|"|>fahrenheit'.startswith(p) for p in unit)
    assert all('<|"|>'.startswith(p) for p in after("get_current_temperature{location:"))
    assert len(after('get_current_temperature{location:<|"|>Lon')) > 40000
    assert len(allowed_after(smol_vocab, GEMMA4, TOOLS, "Sure. call:")) > 40000  # no tag, no grammar


def test_a_whole_call_passes_the_grammar_and_only_another_call_or_the_end_follows(smol_vocab: Any) -> None:
    from rkllmd.generation import ChatMessage, ToolCall

    args = {"location": 'Paris, "TX" <b>{x}</b>', "unit": "celsius", "days": -2}
    call = GEMMA4.render_call_turn(
        ChatMessage("assistant", "", (ToolCall("c", "get_current_temperature", args),))
    )
    after = allowed_after(smol_vocab, GEMMA4, TOOLS, "Ok. " + call)
    assert after and all(
        p.strip(" \t\n") == "" or "<|tool_call>".startswith(p.lstrip(" \t\n")) for p in after
    )
