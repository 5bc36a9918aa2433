"""The pythonic format's own cases (tests/test_toolformats.py runs the shared contract): the
calls Llama 3.2 and Llama 4 write, read without evaluating anything, prose that starts with a
bracket, the templates ``auto`` recognises, and its grammar in llama.cpp.

Transcripts: meta-llama/llama-models, models/llama3_2/text_prompt_format.md and
models/llama4/prompt_format.md ("Zero shot function calling", "Model Response Format") at
a9c89c471f793423afd4cc3ca8671d6e56fe64cb. Templates: tests/fixtures/README.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from rkllmd import toolcalls
from rkllmd.toolcalls.formats.pythonic import FORMAT as PYTHONIC
from tests.test_toolformat_llama3_json import LLAMA32_TEMPLATE
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
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "metric": {"type": "string", "enum": ["celsius"]}},
                "required": ["city"],
            },
        },
    },
    {"type": "function", "function": {"name": "get_user_info", "parameters": {"type": "object"}}},
]


@pytest.mark.parametrize(
    ("output", "calls"),
    [
        (  # Llama 3.2 3B, SF and Seattle
            "[get_weather(city='San Francisco', metric='celsius'), "
            "get_weather(city='Seattle', metric='celsius')]",
            [
                ("get_weather", {"city": "San Francisco", "metric": "celsius"}),
                ("get_weather", {"city": "Seattle", "metric": "celsius"}),
            ],
        ),
        (  # Llama 4, the same question
            '[get_weather(city="San Francisco"), get_weather(city="Seattle")]',
            [("get_weather", {"city": "San Francisco"}), ("get_weather", {"city": "Seattle"})],
        ),
        (  # Llama 3.2 and 4, tools in the user message
            "[get_user_info(user_id=7890, special='black')]",
            [("get_user_info", {"user_id": 7890, "special": "black"})],
        ),
        (  # Llama 4's python block
            '<|python_start|>[get_weather(city="Paris")]<|python_end|>',
            [("get_weather", {"city": "Paris"})],
        ),
        ('<|python_start|>get_weather(city="Paris")', [("get_weather", {"city": "Paris"})]),
        (
            "\n [get_user_info(ids=[1, -2, 3.5], opts={'a': None, 'b': True}, on=false, x=null)]",
            [
                (
                    "get_user_info",
                    {"ids": [1, -2, 3.5], "opts": {"a": None, "b": True}, "on": False, "x": None},
                )
            ],
        ),
        ("[get_user_info()]", [("get_user_info", {})]),
        ("Checking.\n[get_weather(city='Rome')]", [("get_weather", {"city": "Rome"})]),
    ],
)
def test_what_llama_writes_is_calls(output: str, calls: list[Any]) -> None:
    """One character at a time: the calls, and no markup in the text."""
    text, p = parse(PYTHONIC, TOOLS, list(output))
    assert calls_of(p) == calls and not p.problems
    assert "[" not in text and "python" not in text


@pytest.mark.parametrize(
    "output",
    [
        "[1, 2, 3] are the first numbers.",
        "[see below] for details",
        "[Paris](https://example.org) is a link",
        "[get_weather] is the tool I would use",
        "I would call [get_weather(city='Paris')] for that.",  # mid-line: Meta calls this wrong
        "[ ] todo item",
        "[get_weather",
    ],
)
def test_prose_with_brackets_is_text(output: str) -> None:
    """A bracket that does not open ``[name(key=`` at a line's start stays text, whole."""
    for deltas in (list(output), [output]):
        text, p = parse(PYTHONIC, TOOLS, deltas)
        assert text == output and not p.calls and not p.problems


def test_prose_streams_and_a_held_line_start_comes_out_when_it_is_no_call() -> None:
    p = PYTHONIC.parser(TOOLS)
    assert p.feed("Sure.\n[get_wea") == "Sure.\n"
    assert p.feed("ther] is a tool") == "[get_weather] is a tool"
    assert p.finish() == ""


@pytest.mark.parametrize(
    ("output", "why"),
    [
        ("[get_weather(city=Paris)]", "not a literal"),
        ('[get_weather("Paris")]', "positional"),
        ("[get_weather(city=__import__('os').system('touch /tmp/x'))]", "not a literal"),
        ("[get_weather(city=open('/etc/passwd').read())]", "not a literal"),
        ("[get_weather(city='Paris', **{'days': 2})]", "**arguments"),
        ("[get_weather(city=1e999)]", "not finite"),
        ("[get_weather(city='Paris'), 42]", "not a call"),
        ("[get_weather(city='Paris', city='Rome')]", "twice"),
        ("[get_weather(city='Paris'", "unterminated"),
        ("<|python_start|>print('hi')", "positional"),
    ],
)
def test_a_malformed_call_is_withheld_and_recorded(output: str, why: str) -> None:
    """Not literals (never evaluated), positional arguments, a number no reply can carry, a list
    never closed: no call, nothing spoken, the reason recorded."""
    text, p = parse(PYTHONIC, TOOLS, [output])
    assert text == "" and not p.calls and why in p.problems[0]


def test_a_bracket_inside_a_string_does_not_close_the_list() -> None:
    text, p = parse(PYTHONIC, TOOLS, list("[get_weather(city='a]b \\' ]')] done"))
    assert calls_of(p) == [("get_weather", {"city": "a]b ' ]"})] and text == " done"


def test_rendered_calls_are_python_literals_the_parser_reads_back() -> None:
    """JSON values of every kind written as Python literals (True, None, nested) round-trip."""
    from rkllmd.generation import ChatMessage, ToolCall

    args = {"s": 'a "q" \n', "n": -3, "f": 0.5, "b": True, "z": None, "l": [1, {"k": False}]}
    turn = PYTHONIC.render_call_turn(ChatMessage("assistant", "", (ToolCall("c", "get_user_info", args),)))
    assert "b=True" in turn and "z=None" in turn
    _, p = parse(PYTHONIC, TOOLS, [turn])
    assert calls_of(p) == [("get_user_info", args)]


def test_auto_recognises_the_pythonic_templates_and_llama4_by_name() -> None:
    """vLLM's Llama 3.2 and Llama 4 pythonic templates are pythonic (3.2's also carries Llama 3's
    marks: pythonic ranks first); Meta's own Llama 3.2 template asks for JSON and stays
    llama3_json; by name, Llama 4 is pythonic."""
    for fixture in ("llama3.2-pythonic.jinja", "llama4-pythonic.jinja"):
        assert toolcalls.choose("auto", (FIXTURES / fixture).read_text(), "model.gguf").name == "pythonic"
    assert toolcalls.choose("auto", LLAMA32_TEMPLATE, "model.gguf").name == "llama3_json"
    assert toolcalls.choose("auto", None, "Llama-4-Scout-17B-16E-Instruct-Q4_K_M.gguf").name == "pythonic"
    assert toolcalls.choose("auto", None, "Llama-3.2-3B-Instruct.rkllm").name == "llama3_json"


def test_tools_are_offered_in_metas_words() -> None:
    text = PYTHONIC.render_tools("Be brief.", TOOLS)
    assert text.startswith("Be brief.\n\n") and "[func_name1(params_name1=params_value1" in text
    assert '"name": "get_user_info"' in text


def test_the_grammar_holds_a_started_list_to_the_tools_and_their_parameters(smol_vocab: Any) -> None:
    """On llama.cpp (its converter's GBNF, its regex engine): after ``[get_weather(`` only the
    tool's parameter names or ``)`` may come; a parameter's value follows its schema (an enum
    here); a tool without properties takes any keyword; the same text after words is free."""
    after = allowed_after(smol_vocab, PYTHONIC, TOOLS, "[get_weather(")
    assert after and all(p.startswith(("c", "m", ")")) for p in after)
    assert {"city", ")"} <= after
    assert allowed_after(smol_vocab, PYTHONIC, TOOLS, "[get_weather(metric=") == {'"'}
    assert "x" in allowed_after(smol_vocab, PYTHONIC, TOOLS, "[get_user_info(")
    assert len(allowed_after(smol_vocab, PYTHONIC, TOOLS, "Sure [get_weather(")) > 40000


def test_tools_no_python_call_can_name_are_left_out_of_the_grammar(smol_vocab: Any) -> None:
    """``my-tool(...)`` or ``my-key=`` is not Python: the grammar never offers them (it would hold
    the model to a call the parser refuses); with no tool left there is no grammar."""
    odd = [
        {"type": "function", "function": {"name": "my-tool", "parameters": {"type": "object"}}},
        {
            "type": "function",
            "function": {
                "name": "lights",
                "parameters": {"type": "object", "properties": {"my-key": {"type": "string"}}},
            },
        },
    ]
    assert PYTHONIC.grammar(odd[:1], lambda s: 'root ::= "x"\n') is None
    assert allowed_after(smol_vocab, PYTHONIC, odd, "[lights(") == {")", "),", ")]"}


@pytest.fixture(scope="module")
def smollm2() -> Iterator[Any]:
    yield from smollm2_as("pythonic")


@pytest.mark.model
def test_llamacpp_grammar_makes_the_model_write_this_familys_call(smollm2: Any) -> None:
    """tool_choice required on llama.cpp: SmolLM2 (no tool template: rkllmd offers the tools in
    this family's words) writes a call in this family's syntax, and the parser reads it."""
    assert smollm2.describe()["tool_format"] == "pythonic"
    assert_writes_its_call(smollm2, TOOLS)
