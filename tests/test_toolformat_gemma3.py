"""The Gemma 3 format's own cases (tests/test_toolformats.py runs the shared contract): calls in a
```tool_code``` block as Google's function-calling guides show them, the Python read safely (never
run), malformed blocks, ``auto`` on its template and names, and the tool prompt.

The convention is Google's (ai.google.dev "Function calling with Gemma" and the Gemma cookbook's
agent prompt: calls "wrapped with ```tool_code```", results "wrapped in ```tool_output```").
tests/fixtures/gemma3-it.jinja is Gemma 3 instruct's chat template (tokenizer_config.json's
``chat_template`` of google/gemma-3-*-it), transcribed from a public copy of it; the Hugging Face
file itself was not reachable here. It renders no tools, so rkllmd always writes the tool prompt.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog

from rkllmd import toolcalls
from rkllmd.generation import ChatMessage
from rkllmd.toolcalls import pycall
from rkllmd.toolcalls.formats.gemma3 import FORMAT as GEMMA3
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
                },
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
PARIS = ("get_weather", {"city": "Paris"})


def parse(deltas: list[str]) -> tuple[str, Any]:
    return parse_with(GEMMA3, TOOLS, deltas)


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ('```tool_code\nget_weather(city="Paris")\n```', [PARIS]),
        ('```tool_code\nprint(get_weather(city="Paris"))\n```', [PARIS]),
        ('```tool_code\nprint(default_api.get_weather(city="Paris"))\n```', [PARIS]),
        ("```tool_code\nget_weather('Paris', 2)\n```", [("get_weather", {"city": "Paris", "days": 2})]),
        (
            '```tool_code\nget_weather(\n    city="Paris",\n    days=2,\n)\n```',
            [("get_weather", {"city": "Paris", "days": 2})],
        ),
        ('```tool_code\n{"name": "get_weather", "parameters": {"city": "Paris"}}\n```', [PARIS]),
        ('```tool_call\nget_weather(city="Paris")\n```', [PARIS]),
        (
            '```tool_code\nget_weather(city="Paris")\nHassTurnOn(name="Kitchen Light")\n```',
            [PARIS, ("HassTurnOn", {"name": "Kitchen Light"})],
        ),
        (
            '```tool_code\n[get_weather(city="Paris"), get_weather(city="Rome")]\n```',
            [PARIS, ("get_weather", {"city": "Rome"})],
        ),
    ],
    ids=[
        "call",
        "print",
        "default_api",
        "positional",
        "multi-line",
        "json",
        "tool_call-fence",
        "two-lines",
        "list",
    ],
)
def test_what_gemma_writes_is_a_call_whatever_the_token_boundaries(
    output: str, expected: list[tuple[str, dict[str, Any]]]
) -> None:
    """Each documented shape, whole and one character at a time: the calls, no text."""
    for deltas in ([output], list(output)):
        text, p = parse(deltas)
        assert text == "" and calls_of(p) == expected and not p.problems


def test_text_around_blocks_and_a_python_example_are_kept() -> None:
    """Text before and after a block, and an ordinary ```python block in the answer, stream as
    text; two blocks are two calls."""
    out = (
        'Let me check.\n```tool_code\nget_weather(city="Paris")\n```\nand\n'
        '```tool_code\nget_weather(city="Rome")\n```\nExample:\n```python\nprint(1)\n```'
    )
    text, p = parse(list(out))
    assert text == "Let me check.\n\nand\n\nExample:\n```python\nprint(1)\n```"
    assert [c.arguments["city"] for c in p.calls] == ["Paris", "Rome"]


@pytest.mark.parametrize(
    "body",
    [
        "get_weather(city=city)",
        'get_weather(city="Paris" + "!")',
        "get_weather(**{'city': 'Paris'})",
        "__import__('os').system('touch {marker}')",
        "[x for x in ()]",
        "get_weather(city={'Paris'})",
        "get_weather(days=1e999)",
        'get_weather(city="Paris"',
        "x = 1",
    ],
    ids=[
        "variable",
        "operator",
        "double-star",
        "import",
        "comprehension",
        "set",
        "infinite",
        "unclosed",
        "assignment",
    ],
)
def test_python_that_is_not_a_literal_call_is_withheld_and_never_run(body: str, tmp_path: Path) -> None:
    """Anything but a call with literal arguments is a malformed block: withheld, recorded,
    logged; the text is only parsed, so the command in it never runs."""
    marker = tmp_path / "ran"
    output = "```tool_code\n" + body.replace("{marker}", str(marker)) + "\n```"
    with structlog.testing.capture_logs() as logs:
        text, p = parse(list(output))
    assert text == "" and not p.calls and p.problems and p.problems[0].startswith("not a call")
    assert any(e["event"] == "malformed tool call withheld" for e in logs)
    assert not marker.exists()


def test_a_cut_off_or_reopened_block_is_withheld() -> None:
    text, p = parse(['Sure.\n```tool_code\nget_weather(city="Pa'])
    assert text == "Sure.\n" and not p.calls and p.problems == ["unterminated: the output ended inside it"]
    text, p = parse(['```tool_code\nget_weather(\n```tool_code\nget_weather(city="Paris")\n```'])
    assert text == "" and calls_of(p) == [PARIS] and len(p.problems) == 1


def test_literals_read_as_json_values() -> None:
    """Python's and JSON's spellings of true/false/null, signs, tuples, nested dicts."""
    (call,) = pycall.read_calls('f(a=True, b=false, c=None, d=null, e=-2, f=+1.5, g=(1, "x"), h={"k": [1]})')
    assert call == (
        "f",
        {"a": True, "b": False, "c": None, "d": None, "e": -2, "f": 1.5, "g": [1, "x"], "h": {"k": [1]}},
    )
    with pytest.raises(ValueError, match="longer than"):
        pycall.read_calls("f(a='" + "x" * pycall.MAX_SOURCE + "')")


def test_calls_it_renders_are_python_that_reads_back() -> None:
    """A call turn with quotes, unicode, nested values: rendered as Gemma writes it, read back equal."""
    from rkllmd.generation import ToolCall

    args = {"city": 'Zürich "ZH"', "days": 2, "opts": {"a": None, "b": [True, 1.5]}}
    turn = GEMMA3.render_call_turn(ChatMessage("assistant", "", (ToolCall("c", "get_weather", args),)))
    assert turn.startswith("```tool_code\nget_weather(city=") and turn.endswith("\n```")
    _, p = parse([turn])
    assert calls_of(p) == [("get_weather", args)]


def test_the_tool_prompt_is_the_cookbooks() -> None:
    """Tools as Python signatures with docstrings after Google's instructions; results in a
    ```tool_output``` block."""
    text = GEMMA3.render_tools("You run a smart home.", TOOLS)
    assert text.startswith(
        "You run a smart home.\n\nAt each turn, if you decide to invoke any of the function(s)"
    )
    assert "def get_weather(city: str, days: int | None = None):" in text
    assert '    """The weather in a city\n\n    Args:\n      city: The city' in text
    assert "def HassTurnOn(name: str | None = None):" in text and text.endswith("```")
    result = ChatMessage("tool", '{"temperature": 18}', tool_call_id="c", name="get_weather")
    assert GEMMA3.render_tool_result(result) == '```tool_output\n{"temperature": 18}\n```'


def test_auto_recognises_gemma3_by_template_and_name() -> None:
    """Gemma 3's real template (no tool tokens: its turns say it), and Gemma 2/3 by name; Gemma 4
    and FunctionGemma are not it."""
    template = (FIXTURES / "gemma3-it.jinja").read_text()
    prompt = render("gemma3-it.jinja", [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert (
        prompt == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    )  # the fixture is a working template
    assert toolcalls.choose("auto", template, "model.gguf").name == "gemma3"
    for name in ("gemma-3-4b-it_w8a8_rk3588.rkllm", "gemma3:1b", "gemma-2-2b-it.gguf", "gemma-3n-E2B-it"):
        assert toolcalls.choose("auto", None, name).name == "gemma3", name
    assert toolcalls.choose("auto", None, "functiongemma-270m-it").name != "gemma3"
    hermes_tuned = template.replace(
        "{%- for message", "{# calls: <tool_call>{...}</tool_call> #}{%- for message", 1
    )
    assert toolcalls.choose("auto", hermes_tuned, "gemma-3-4b-tools").name == "hermes"
    assert toolcalls.choose("auto", (FIXTURES / "gemma4.jinja").read_text(), "gemma-3").name == "gemma4"


# --- the grammar on the real llama.cpp (SmolLM2's vocabulary) ----------------------------------


def test_the_grammar_holds_the_block_to_offered_calls_with_typed_literals(smol_vocab: Any) -> None:
    """From the fence on: an offered tool's name, its keyword arguments, digits for an integer, a
    quote for a string; an ordinary ```python fence, or prose, stays free."""

    def after(text: str) -> set[str]:
        return allowed_after(smol_vocab, GEMMA3, TOOLS, "Sure.\n```tool_code\n" + text)

    names = after("")
    assert names and all("get_weather(".startswith(p) or "HassTurnOn(".startswith(p) for p in names)
    assert all(any(k.startswith(p) for k in ("city=", "days=", ")")) for p in after("get_weather("))
    assert all(p[0] in "-0123456789" for p in after("get_weather(days="))
    assert all(p[0] in "\"'" for p in after("get_weather(city="))
    assert len(after('get_weather(city="Par')) > 40000
    assert len(allowed_after(smol_vocab, GEMMA3, TOOLS, "Sure.\n```python\n")) > 40000


def test_a_call_it_renders_passes_the_grammar_then_another_call_or_the_fence(smol_vocab: Any) -> None:
    """A rendered call with quotes and unicode in a string goes through the grammar; after its
    line only another offered call or the closing fence may come."""
    from rkllmd.generation import ToolCall

    call = ToolCall("c", "get_weather", {"city": 'Zürich "ZH"', "days": -2})
    turn = GEMMA3.render_call_turn(ChatMessage("assistant", "", (call,)))
    assert turn.endswith("\n```")
    nxt = allowed_after(smol_vocab, GEMMA3, TOOLS, "Ok.\n" + turn[:-3])
    assert nxt and all(any(w.startswith(p) for w in ("```", "get_weather(", "HassTurnOn(")) for p in nxt)
