"""The tool-call format interface: every format found in rkllmd/toolcalls/formats/ keeps the same
contract (each new format gets these tests by being there), and ``tool_format`` chooses one per model.

The calls fed to each parser are the ones the format itself renders for an earlier assistant turn:
what a model of that family writes, so a format whose rendering and parsing disagree fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import structlog

from rkllmd import toolcalls
from rkllmd.errors import ConfigError
from rkllmd.generation import ChatMessage, ToolCall
from rkllmd.settings import load_settings
from rkllmd.toolcalls import ToolFormat
from rkllmd.toolcalls.formats import all_formats
from tests.toolformat_helpers import TOOLS

FIXTURES = Path(__file__).parent / "fixtures"
FORMATS = list(all_formats().values())
ONE = (ToolCall("call_1", "get_weather", {"city": "Paris", "days": 2}),)
TWO = (*ONE, ToolCall("call_2", "HassTurnOn", {"name": "kitchen light"}))
PROSE = "The weather in Paris is mild today, 18 degrees; take a light coat."
# The most a parser may hold back of text that holds no call: a tag or marker's length, no more.
HOLD_LIMIT = 16


def call_text(fmt: ToolFormat, calls: tuple[ToolCall, ...]) -> str:
    """What a model of ``fmt``'s family writes to make ``calls`` (and nothing else)."""
    return fmt.render_call_turn(ChatMessage("assistant", "", calls))


def run(fmt: ToolFormat, deltas: list[str]) -> tuple[list[str], str, Any]:
    p = fmt.parser(TOOLS)
    out = [p.feed(d) for d in deltas]
    tail = p.finish()
    return out, "".join(out) + tail, p


def named(calls: list[ToolCall]) -> list[tuple[str, dict[str, Any]]]:
    return [(c.name, c.arguments) for c in calls]


def fake_gbnf(schema: dict[str, Any]) -> str:
    return 'alt ::= "{}"\nroot ::= alt\n'


def ecma_search(pattern: str, text: str) -> re.Match[str] | None:
    """As llama.cpp's std::regex searches: ``$`` is the end of the text only."""
    return re.search(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern, text)


@pytest.fixture(params=FORMATS, ids=lambda f: f.name)
def fmt(request: pytest.FixtureRequest) -> ToolFormat:
    f: ToolFormat = request.param
    return f


# --- the contract, for every format ----------------------------------------------------------


def test_every_format_is_named_and_offered_in_the_config(fmt: ToolFormat) -> None:
    """A format's name is what ``tool_format`` takes, and looking it up gives the same format."""
    assert re.fullmatch(r"[a-z0-9_]+", fmt.name) and fmt.name in toolcalls.names()
    assert toolcalls.get(fmt.name) is fmt and toolcalls.choose(fmt.name, None, "any") is fmt
    assert all(isinstance(t, str) and t for t in fmt.visible_tokens)


@pytest.mark.parametrize("calls", [ONE, TWO], ids=["single", "parallel"])
def test_calls_it_renders_parse_back_in_order_with_fresh_ids(
    fmt: ToolFormat, calls: tuple[ToolCall, ...]
) -> None:
    """The calls a model writes become the same calls, in order, each with a new call id; no
    markup is left in the text."""
    _, whole, p = run(fmt, [call_text(fmt, calls)])
    assert named(p.calls) == named(list(calls)) and not p.problems
    assert whole.strip() == ""
    assert all(c.id.startswith("call_") for c in p.calls) and len({c.id for c in p.calls}) == len(calls)


@pytest.mark.parametrize("calls", [ONE, TWO], ids=["single", "parallel"])
def test_split_at_every_position_changes_nothing(fmt: ToolFormat, calls: tuple[ToolCall, ...]) -> None:
    """Whatever the token boundaries (every cut into two deltas, and one character at a time),
    the calls and the text are the same as for the whole output."""
    text = call_text(fmt, calls)
    _, whole_once, first = run(fmt, [text])
    for cut in range(1, len(text)):
        _, whole, p = run(fmt, [text[:cut], text[cut:]])
        assert named(p.calls) == named(first.calls) and whole == whole_once, cut
    _, whole, p = run(fmt, list(text))
    assert named(p.calls) == named(first.calls) and whole == whole_once


def test_text_without_calls_is_never_lost_and_barely_held(fmt: ToolFormat) -> None:
    """Prose streams through whole and in order; at no point is more than a possible tag held."""
    p = fmt.parser(TOOLS)
    emitted = ""
    for i, ch in enumerate(PROSE):
        emitted += p.feed(ch)
        assert PROSE.startswith(emitted) and i + 1 - len(emitted) <= HOLD_LIMIT
    assert emitted + p.finish() == PROSE and not p.calls and not p.problems


@pytest.mark.parametrize("text", ["a < b and c > d", "[1, 2] {x} (y)", "use `ls` here", "<", "[", "{"])
def test_brackets_and_tag_like_text_are_text(fmt: ToolFormat, text: str) -> None:
    """Text that only looks like markup comes out whole at the end, with no call and no problem."""
    _, whole, p = run(fmt, list("Note: " + text))
    assert whole == "Note: " + text and not p.calls and not p.problems


@pytest.mark.parametrize("keep", [0.5, 0.75, -1])
def test_a_cut_off_call_is_no_call_and_is_withheld_or_text(fmt: ToolFormat, keep: float) -> None:
    """An output that ends inside a call gives no call; what was held is either recorded as a
    problem, with a warning logged, or returned as text: never silently lost."""
    text = call_text(fmt, ONE)
    part = text[: int(len(text) * keep)] if keep > 0 else text[:-1]
    with structlog.testing.capture_logs() as logs:
        deltas, whole, p = run(fmt, list(part))
    assert not p.calls
    if p.problems:
        assert any(e["log_level"] == "warning" for e in logs)
        assert "".join(deltas) == whole  # nothing of the call came out while streaming
    else:
        assert whole == part


def test_text_before_and_after_a_call_is_kept(fmt: ToolFormat) -> None:
    """An assistant turn with text and a call renders and parses back to both (where the
    family writes text before its calls)."""
    turn = fmt.render_call_turn(ChatMessage("assistant", "Let me look.", ONE))
    _, whole, p = run(fmt, [turn])
    assert named(p.calls) == named(list(ONE)) and whole.strip() == "Let me look."


def test_rendering_offers_every_tool_and_keeps_the_system_prompt(fmt: ToolFormat) -> None:
    """The tool section names every tool, after the configured system prompt; a result turn
    carries the result's text."""
    text = fmt.render_tools("You run a smart home.", TOOLS)
    assert text.startswith("You run a smart home.")
    assert all(t["function"]["name"] in text for t in TOOLS)
    assert all(t["function"]["name"] in fmt.render_tools(None, TOOLS) for t in TOOLS)
    result = ChatMessage("tool", '{"temperature": 18}', tool_call_id="call_1", name="get_weather")
    assert '{"temperature": 18}' in fmt.render_tool_result(result)


def test_grammar_when_offered_starts_where_its_calls_start(fmt: ToolFormat) -> None:
    """A format's grammar has one ``root``; its trigger fires on some prefix of a call it
    renders, with the grammar starting at the call, and never on prose."""
    g = fmt.grammar(TOOLS, fake_gbnf)
    if g is None:
        pytest.skip(f"{fmt.name} has no grammar: its calls are only parsed")
    assert sum(line.startswith("root ::=") for line in g.gbnf.splitlines()) == 1 and g.triggers
    text = call_text(fmt, ONE).lstrip()
    starts = [
        m.start(1) for k in range(1, len(text) + 1) for t in g.triggers if (m := ecma_search(t, text[:k]))
    ]
    assert starts and set(starts) == {0}
    assert not any(ecma_search(t, PROSE[:k]) for k in range(1, len(PROSE) + 1) for t in g.triggers)


def test_detect_answers_for_anything(fmt: ToolFormat) -> None:
    """Detection takes an unknown template and any name without failing."""
    for template in (None, "", "{{ messages }}"):
        assert isinstance(fmt.detect(template, ""), bool)


# --- choosing a format --------------------------------------------------------------------


def test_auto_recognises_qwen25_from_its_real_template() -> None:
    """Qwen2.5's own chat template (as its GGUF carries it) is Hermes, whatever the file is called."""
    template = (FIXTURES / "qwen2.5-instruct.jinja").read_text()
    assert toolcalls.choose("auto", template, "assistant model.gguf").name == "hermes"


def test_auto_falls_back_to_hermes_and_a_named_format_wins() -> None:
    """No format recognises a plain ChatML model: Hermes. A named format is used as named."""
    chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    assert toolcalls.choose("auto", chatml, "smollm2 smollm2-135m.gguf").name == "hermes"
    assert toolcalls.choose("auto", None, "Qwen2.5-1.5B-Instruct_W8A8_RK3588.rkllm").name == "hermes"
    assert toolcalls.choose("hermes", "{{ '[TOOL_CALLS]' }}", "mistral").name == "hermes"


def test_unknown_format_name_is_a_config_error_naming_the_choices(tmp_path: Path) -> None:
    """A ``tool_format`` no format has is refused when the configuration is read, with the known names."""
    p = tmp_path / "c.toml"
    p.write_text('default_model = "m"\n[models.m]\nruntime = "llamacpp"\ntool_format = "hermez"\n')
    with pytest.raises(ConfigError) as ei:
        load_settings(p)
    line = next(x for x in ei.value.message.splitlines() if "tool_format" in x)
    assert line.strip().startswith("- models.m.") and "'hermez'" in line
    assert all(n in line for n in toolcalls.names())
    p.write_text('default_model = "m"\n[models.m]\nruntime = "llamacpp"\ntool_format = "hermes"\n')
    assert load_settings(p).models["m"].tool_format == "hermes"
    with pytest.raises(ValueError, match="unknown tool_format 'x'"):
        toolcalls.get("x")


def test_held_suffix_is_the_longest_tail_that_could_still_become_a_tag() -> None:
    """The shared helper against its definition, over every short text of tag-like characters."""
    import itertools

    from rkllmd.toolcalls.format import held_suffix

    tags = ("<tool_call>", "<|python_tag|>", "[TOOL_CALLS]")

    def by_definition(text: str) -> int:
        return max(
            (k for k in range(1, len(text) + 1) for t in tags if len(t) > k and t.startswith(text[-k:])),
            default=0,
        )

    for n in range(6):
        for chars in itertools.product("<t|[o_", repeat=n):
            text = "".join(chars)
            assert held_suffix(text, tags) == by_definition(text), text
    assert held_suffix("see <tool_c", tags) == 7 and held_suffix("a <|python_t", tags) == 10
    assert held_suffix("x <tool_call>", tags) == 0  # a whole tag is the parser's, not held


@pytest.mark.parametrize(
    ("output", "start"),
    [("[TOOL_CALLS]", 0), ("ok [TOOL_CALLS] [", 3), ('[TOOL_CALLS][{"', 0), ("[TOOL_CALLS]\n[{", 0)],
)
def test_tagged_grammar_for_a_list_body_without_a_close_tag(output: str, start: int) -> None:
    """The shared helper fits a family that writes a tag then a JSON list and no close tag
    (Mistral's ``[TOOL_CALLS][...]``): no close literal, a trigger that waits for ``[{"``."""
    from rkllmd.toolcalls.format import tagged_json_grammar

    g = tagged_json_grammar("[TOOL_CALLS]", "", {"type": "array"}, fake_gbnf, "[ \\t\\n]{0,4}", '[{"')
    assert g.gbnf.splitlines()[1] == 'tool-call ::= "[TOOL_CALLS]" tool-ws tool-call-body'
    (trigger,) = g.triggers
    m = ecma_search(trigger, output)
    assert m is not None and m.start(1) == start
    for late in ('[TOOL_CALLS]{"', "[TOOL_CALLS][x", '[TOOL_CALLS][{"n'):
        assert ecma_search(trigger, late) is None
