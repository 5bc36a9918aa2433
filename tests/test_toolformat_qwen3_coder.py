"""The Qwen3-Coder XML format's own cases (tests/test_toolformats.py runs the shared contract): the
calls its template describes and renders, values typed by the tools' schemas, malformed blocks,
``auto`` telling its template from Qwen2.5's and Qwen3's (all three write ``<tool_call>``), and
the tool section as its own template writes it.

tests/fixtures/qwen3-coder.jinja is Qwen3-Coder-30B-A3B-Instruct's chat template as llama.cpp
keeps it (models/templates/Qwen3-Coder.jinja, read from a llama.cpp fork at 90dd63ae);
tests/fixtures/qwen3.jinja is Qwen3's (llama.cpp's models/templates/Qwen-Qwen3-0.6B.jinja, read
from a fork at b354d7c9, line endings made LF). The Hugging Face originals were not reachable here.
"""

from __future__ import annotations

from typing import Any

import pytest
import structlog

from rkllmd import toolcalls
from rkllmd.toolcalls.formats.qwen3_coder import FORMAT as CODER
from tests.chat_templates import render
from tests.toolformat_helpers import FIXTURES, allowed_after, calls_of, smol_vocab
from tests.toolformat_helpers import parse as parse_with

__all__ = ["smol_vocab"]  # a fixture, used by name

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "The city"},
                    "days": {"type": "integer"},
                    "hourly": {"type": "boolean"},
                    "lat": {"type": ["number", "null"]},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "where": {"type": "object"},
                },
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "write_file",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            },
        },
    },
]
WEATHER = (
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"
)


def parse(deltas: list[str]) -> tuple[str, Any]:
    return parse_with(CODER, TOOLS, deltas)


def test_the_templates_call_one_character_at_a_time() -> None:
    """The call shape the template asks for, fed a character at a time: one call, no text."""
    text, p = parse(list(WEATHER))
    assert text == "" and calls_of(p) == [("get_weather", {"city": "Paris"})] and not p.problems


def test_reasoning_before_and_parallel_calls() -> None:
    """Text before the calls (the template allows it before, not after), then two blocks."""
    out = (
        "I'll check both cities.\n"
        + WEATHER
        + "\n"
        + WEATHER.replace("Paris", "Rome").replace(
            "</function>", "<parameter=days>\n3\n</parameter>\n</function>"
        )
    )
    for cut in range(1, len(out)):
        text, p = parse([out[:cut], out[cut:]])
        assert text.strip() == "I'll check both cities.", cut
        assert calls_of(p) == [
            ("get_weather", {"city": "Paris"}),
            ("get_weather", {"city": "Rome", "days": 3}),
        ]


def test_values_take_their_schema_types() -> None:
    """Integer, boolean, nullable number, array and object as the schema says; a multi-line string
    keeps its inner lines (only the newline each side of the value is markup)."""
    out = (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nSan Francisco\n</parameter>\n"
        "<parameter=days>\n-2\n</parameter>\n<parameter=hourly>\nTrue\n</parameter>\n"
        '<parameter=lat>\n37.77\n</parameter>\n<parameter=tags>\n["rain", "wind"]\n</parameter>\n'
        "<parameter=where>\n{'zip': '94103', 'n': 1}\n</parameter>\n</function>\n</tool_call>"
        "<tool_call>\n<function=write_file>\n<parameter=path>\na.py\n</parameter>\n"
        "<parameter=content>\nif a < b:\n    print(1)\n\n</parameter>\n</function>\n</tool_call>"
    )
    text, p = parse([out])
    assert text == "" and not p.problems
    assert calls_of(p) == [
        (
            "get_weather",
            {
                "city": "San Francisco",
                "days": -2,
                "hourly": True,
                "lat": 37.77,
                "tags": ["rain", "wind"],
                "where": {"zip": "94103", "n": 1},
            },
        ),
        ("write_file", {"path": "a.py", "content": "if a < b:\n    print(1)\n"}),
    ]


def test_a_value_that_is_not_its_type_stays_text_and_unknown_tools_get_text() -> None:
    """As Qwen's parser: a value that does not read as its type is kept as text, ``null`` is
    None, and a parameter or tool the request did not offer gets its text."""
    out = (
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nnull\n</parameter>\n"
        "<parameter=days>\nthree\n</parameter>\n<parameter=extra>\n5\n</parameter>\n</function>\n</tool_call>"
        "<tool_call>\n<function=other>\n<parameter=n>\n5\n</parameter>\n</function>\n</tool_call>"
    )
    _, p = parse([out])
    assert calls_of(p) == [
        ("get_weather", {"city": "null", "days": "three", "extra": "5"}),
        ("other", {"n": "5"}),
    ]


def test_hermes_json_in_the_block_is_read_too() -> None:
    _, p = parse(['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'])
    assert calls_of(p) == [("get_weather", {"city": "Paris"})] and not p.problems


@pytest.mark.parametrize(
    "output",
    [
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</function>\n</tool_call>",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</tool_call>",
        "<tool_call>\nget_weather(city='Paris')\n</tool_call>",
        WEATHER.replace("</function>", "</function>\nand more"),
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nPar",
        "<tool_call>\n<function=get_weather>\n<tool_call>\n<function=get_weather>\n<parameter=city>\n",
    ],
    ids=["parameter-unclosed", "function-unclosed", "python", "trailing-text", "cut-off", "reopened"],
)
def test_a_malformed_block_is_withheld_and_recorded(output: str) -> None:
    """Never spoken: the markup is withheld, the reason recorded with a warning."""
    with structlog.testing.capture_logs() as logs:
        text, p = parse(list(output))
    assert text == "" and not p.calls and p.problems
    assert any(e["event"] == "malformed tool call withheld" for e in logs)


def test_a_block_opened_again_is_dropped_and_the_next_one_read() -> None:
    """A call abandoned half-way for a new <tool_call>: the first is a problem, the second acts."""
    text, p = parse(["<tool_call>\n<function=get_weather>\n<parameter=ci", WEATHER])
    assert text == "" and calls_of(p) == [("get_weather", {"city": "Paris"})] and len(p.problems) == 1


def test_the_templates_own_rendering_of_a_call_parses_back() -> None:
    """An assistant turn as the real template renders it (non-string values through Jinja's
    ``| string``: ``True``, ``{'a': 1}``) reads back as the same call."""
    args = {"city": "Paris", "days": 2, "hourly": True, "where": {"a": 1}, "tags": ["x"]}
    messages = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": args}}],
        },
    ]
    prompt = render("qwen3-coder.jinja", messages, tools=TOOLS)
    turn = prompt.split("<|im_start|>assistant\n", 1)[1].split("<|im_end|>")[0]
    text, p = parse(list(turn))
    assert text == "" and calls_of(p) == [("get_weather", args)]


def test_tools_are_offered_as_the_template_writes_them() -> None:
    """The tool section rkllmd writes (for a runtime that does not render tools) is the template's
    system turn, character for character; with no system prompt, the template's default one."""
    system = "You run a smart home."
    prompt = render(
        "qwen3-coder.jinja",
        [{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
        tools=TOOLS,
    )
    assert prompt.startswith("<|im_start|>system\n")
    assert CODER.render_tools(system, TOOLS) == prompt[len("<|im_start|>system\n") :].split("<|im_end|>")[0]
    prompt = render("qwen3-coder.jinja", [{"role": "user", "content": "hi"}], tools=TOOLS)
    assert CODER.render_tools(None, TOOLS) == prompt[len("<|im_start|>system\n") :].split("<|im_end|>")[0]


def test_auto_tells_qwen3_coder_from_qwen25_and_qwen3() -> None:
    """All three templates write <tool_call>: Qwen3-Coder's XML one is this format (it ranks above
    Hermes), Qwen2.5's and Qwen3's JSON ones stay Hermes, whatever the file is called."""
    template = {
        n: (FIXTURES / n).read_text() for n in ("qwen3-coder.jinja", "qwen3.jinja", "qwen2.5-instruct.jinja")
    }
    assert CODER.priority > toolcalls.get("hermes").priority
    assert toolcalls.choose("auto", template["qwen3-coder.jinja"], "model.gguf").name == "qwen3_coder"
    assert toolcalls.choose("auto", template["qwen3.jinja"], "qwen3-coder.gguf").name == "hermes"
    assert toolcalls.choose("auto", template["qwen2.5-instruct.jinja"], "model.gguf").name == "hermes"
    assert (
        toolcalls.choose("auto", None, "Qwen3-Coder-30B-A3B-Instruct_W8A8_RK3588.rkllm").name == "qwen3_coder"
    )
    assert toolcalls.choose("auto", None, "Qwen3-4B-Instruct-2507.rkllm").name == "hermes"


# --- the grammar on the real llama.cpp (SmolLM2's vocabulary; the model for one generation) ------


CALL_START = "Sure. <tool_call>\n<function="


def test_the_grammar_holds_a_started_call_to_offered_tools_and_typed_values(smol_vocab: Any) -> None:
    """Free text, then from <tool_call> on: only an offered tool's name, only its parameters, a
    typed value where the schema gives a type; a string value is free up to its closing tag."""

    names = allowed_after(smol_vocab, CODER, TOOLS, CALL_START)
    assert names and all("get_weather>".startswith(p) or "write_file>".startswith(p) for p in names)
    params = allowed_after(smol_vocab, CODER, TOOLS, CALL_START + "get_weather>\n<parameter=")
    assert params and all(
        any(n.startswith(p) for n in TOOLS[0]["function"]["parameters"]["properties"]) for p in params
    )
    days = allowed_after(smol_vocab, CODER, TOOLS, CALL_START + "get_weather>\n<parameter=days>\n")
    assert days and all(p[0] in "-0123456789" for p in days)
    hourly = allowed_after(smol_vocab, CODER, TOOLS, CALL_START + "get_weather>\n<parameter=hourly>\n")
    assert hourly and all("true".startswith(p) or "false".startswith(p) for p in hourly)
    city = allowed_after(smol_vocab, CODER, TOOLS, CALL_START + "get_weather>\n<parameter=city>\n")
    assert len(city) > 40000  # any text: the value is free
    assert len(allowed_after(smol_vocab, CODER, TOOLS, "Sure. <function=")) > 40000  # no tag, no grammar


def test_a_whole_call_passes_the_grammar_and_only_another_call_or_the_end_follows(smol_vocab: Any) -> None:
    """A call rendered as the template writes it, with a string value holding markup-like text,
    goes through the grammar token by token; after it, only whitespace or another call."""
    from rkllmd.generation import ChatMessage, ToolCall

    args = {"city": "a </param> b <x>", "days": -2, "hourly": False}
    call = CODER.render_call_turn(ChatMessage("assistant", "", (ToolCall("c", "get_weather", args),)))
    after = allowed_after(smol_vocab, CODER, TOOLS, "Ok. " + call)
    assert after and all(p.strip(" \t\n") == "" or "<tool_call>".startswith(p.lstrip(" \t\n")) for p in after)
