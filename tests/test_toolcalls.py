"""Tool-call parsing, rendering, schema checks and the generate fields that carry them."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from rkllmd import protocol
from rkllmd.commands import COMMANDS
from rkllmd.errors import RequestError
from rkllmd.toolcalls import check_schema, validate
from rkllmd.toolcalls.formats.hermes import FORMAT as HERMES
from rkllmd.toolcalls.formats.hermes import HermesParser, call_block, system_block

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def run(pieces: list[str]) -> tuple[list[str], str, HermesParser]:
    p = HermesParser()
    out = [p.feed(x) for x in pieces]
    tail = p.finish()
    return out, "".join(out) + tail, p


@pytest.mark.parametrize("cut", range(1, len("Sure. " + CALL + " Done.")))
def test_tag_split_at_every_position(cut: int) -> None:
    """A call split anywhere across two deltas parses, and the text around it is kept whole."""
    text = "Sure. " + CALL + " Done."
    deltas, whole, p = run([text[:cut], text[cut:]])
    assert whole == "Sure.  Done."
    assert [(c.name, c.arguments) for c in p.calls] == [("get_weather", {"city": "Paris"})]
    assert all("<tool" not in d and "tool_call" not in d for d in deltas)


def test_one_char_deltas_two_calls() -> None:
    """Two calls fed one character at a time come out as two calls and no markup."""
    text = "a" + CALL + CALL.replace("Paris", "Rome") + "b"
    _, whole, p = run(list(text))
    assert whole == "ab"
    assert [c.arguments["city"] for c in p.calls] == ["Paris", "Rome"]
    assert len({c.id for c in p.calls}) == 2 and p.calls[0].id.startswith("call_")


def test_malformed_call_is_withheld_not_returned_as_text() -> None:
    """A call whose body is not a call never comes out as text (it would be spoken): the text around
    it is kept, the reason recorded."""
    bad = "<tool_call>{not json}</tool_call>"
    deltas, whole, p = run(["x ", bad[:7], bad[7:], " y"])
    assert whole == "x  y" and "".join(deltas) == "x  y" and not p.calls
    assert p.problems == ['not a JSON object {"name": ..., "arguments": {...}}']


def test_unterminated_call_is_withheld_at_finish() -> None:
    """An unterminated call is held while streaming and dropped at the end, with the reason."""
    deltas, whole, p = run(['hi <tool_call>{"name": "f"'])
    assert deltas == ["hi "] and whole == "hi " and p.malformed == 1
    assert p.problems == ["unterminated: the output ended inside it"]


def test_a_call_reopened_before_its_close_drops_the_first() -> None:
    """An abandoned call followed by a whole one: the whole one parses, the first is recorded."""
    _, whole, p = run(['a <tool_call>{"name": ', CALL, " b"])
    assert whole == "a  b" and [c.name for c in p.calls] == ["get_weather"]
    assert p.problems == ["a new <tool_call> began before this one was closed"]


def test_lenient_bodies_a_list_of_calls_and_raw_newlines() -> None:
    """A JSON list of calls in one block is each call; a raw newline inside a string is accepted."""
    body = '[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"t": "x\ny"}}]'
    _, whole, p = run([f"<tool_call>{body}</tool_call>"])
    assert whole == "" and not p.problems
    assert [(c.name, c.arguments) for c in p.calls] == [("a", {}), ("b", {"t": "x\ny"})]


@pytest.mark.parametrize("text", ["a < b", "<", "1 <tool", "x <tool_cal y", "<<tool_call"])
def test_plain_angle_brackets_are_text(text: str) -> None:
    """Text that only looks like the start of a tag is all returned."""
    _, whole, p = run(list(text))
    assert whole == text and not p.calls


def test_hold_back_only_a_possible_tag() -> None:
    """While streaming only a suffix that could become <tool_call> is held back."""
    p = HermesParser()
    assert p.feed("a < b") == "a < b"
    assert p.feed(" c <tool") == " c "
    assert p.feed("box") == "<toolbox"


def test_arguments_as_string_and_wrong_shapes() -> None:
    """String arguments are decoded; a call without a name or with non-object arguments is malformed."""
    _, _, p = run(['<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>'])
    assert p.calls[0].arguments == {"a": 1}
    for body in ('{"arguments": {}}', '{"name": "f", "arguments": [1]}', "[1]", "[]"):
        block = f"<tool_call>{body}</tool_call>"
        _, whole, p = run([block])
        assert whole == "" and not p.calls and p.malformed == 1


@pytest.mark.parametrize(
    "args", ['{"level": 1e999}', '{"level": -1e999}', '{"level": NaN}', '"{\\"level\\": Infinity}"']
)
def test_a_call_with_a_number_no_reply_can_carry_is_malformed(args: str) -> None:
    """A model's ``1e999`` (or NaN/Infinity) in arguments, as an object or a JSON string, makes the
    call malformed: accepted, it would have gone out as ``Infinity``, which no client parses."""
    _, whole, p = run([f'<tool_call>{{"name": "f", "arguments": {args}}}</tool_call>'])
    assert whole == "" and not p.calls and p.malformed == 1


def test_rendering_is_hermes() -> None:
    """The system block lists each tool as JSON inside <tools>; a call renders back as it parses."""
    block = system_block(TOOLS)
    assert "<tools>\n" + json.dumps(TOOLS[0]) + "\n</tools>" in block and "<tool_call>" in block
    _, _, p = run([call_block("f", {"a": [1, 2]})])
    assert (p.calls[0].name, p.calls[0].arguments) == ("f", {"a": [1, 2]})


def test_validator_subset() -> None:
    """type, properties, required, enum and items are checked; a match gives no problems."""
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "c": {"enum": ["a", "b"]},
            "l": {"items": {"type": "string"}},
        },
        "required": ["n"],
    }
    assert validate({"n": 1, "c": "a", "l": ["x"]}, schema) == []
    problems = validate({"c": "z", "l": [1]}, schema)
    assert any("missing required property 'n'" in x for x in problems)
    assert any("$.c" in x for x in problems) and any("$.l[0]" in x for x in problems)
    assert validate("s", schema) == ["$: expected object, got string"]


def test_check_schema_refuses_bad_and_large() -> None:
    """A schema with a wrong type keyword or over 16 KiB is refused with its path."""
    with pytest.raises(ValueError, match=r"format.properties.a.type"):
        check_schema({"properties": {"a": {"type": "text"}}}, "format")
    with pytest.raises(ValueError, match="limit is 16384"):
        check_schema({"description": "x" * 20000}, "format")


def gen(**fields: Any) -> protocol.GenerateRequest:
    req = protocol.validate(COMMANDS["generate"], fields)
    assert isinstance(req, protocol.GenerateRequest)
    return req


def refused(**fields: Any) -> str:
    with pytest.raises(RequestError) as ei:
        protocol.validate(COMMANDS["generate"], fields)
    assert ei.value.code == "bad_request"
    return ei.value.message


def test_protocol_tools_reach_the_input() -> None:
    """tools, tool_choice and format go through to the runtime input."""
    inp = gen(
        prompt="hi", tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}}
    ).to_input(10)
    assert inp.tools == tuple(TOOLS) and inp.tool_choice == "function" and inp.tool_name == "get_weather"
    assert inp.call_required
    assert gen(prompt="hi", tools=TOOLS, tool_choice="none").to_input(10).active_tools == ()
    assert gen(prompt="hi", format={"type": "object"}).to_input(10).format == {"type": "object"}


def test_protocol_bad_tools() -> None:
    """Tools that are not a list of functions are refused naming the item."""
    assert 'tools[1]: must be {"type": "function"' in refused(prompt="hi", tools=[TOOLS[0], {"type": "x"}])
    assert "tools: must be a list" in refused(prompt="hi", tools={"a": 1})
    assert "no tool named 'nope'" in refused(
        prompt="hi", tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}
    )
    assert "format" in refused(prompt="hi", format={"type": "wat"})
    assert "format" in refused(prompt="hi", format="yaml")


def test_protocol_tool_turns() -> None:
    """A tool result must answer an earlier call; assistant calls may come without content."""
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "P"}'}}
    msgs = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    inp = gen(messages=msgs, tools=TOOLS).to_input(10)
    assert inp.messages[1].tool_calls[0].arguments == {"city": "P"}
    assert inp.messages[2].tool_call_id == "c1"
    bad = [*msgs[:2], {"role": "tool", "tool_call_id": "x", "content": "sunny"}]
    assert "messages[2].tool_call_id 'x' matches no earlier tool call" in refused(messages=bad)
    assert "messages[1]" in refused(messages=[msgs[0], {"role": "tool", "content": "sunny"}])
    ollama = [*msgs[:2], {"role": "tool", "content": "sunny", "name": "get_weather"}]
    assert gen(messages=ollama).to_input(10).messages[2].name == "get_weather"


# --- the call format's grammar and its lazy trigger (rkllmd/toolcalls/format.py) ---------------


def fake_gbnf(schema: dict[str, Any]) -> str:
    """Stands in for llama.cpp's converter where only the rules around the body are checked."""
    return 'alt ::= "{}"\nroot ::= alt\n'


def ecma_search(pattern: str, text: str) -> re.Match[str] | None:
    """``pattern`` searched as llama.cpp's std::regex (ECMAScript) does: there ``$`` is the end of
    the text only, where Python's also matches before a final newline."""
    assert pattern.endswith("$")
    return re.search(pattern[:-1] + r"\Z", text)


def test_call_grammar_wraps_the_body_in_the_format_tags() -> None:
    """The grammar is one or more calls, each the open tag, the schema's body, the close tag."""
    g = HERMES.grammar(TOOLS, fake_gbnf)
    lines = g.gbnf.splitlines()
    assert lines[0] == "root ::= tool-call (tool-ws tool-call)* tool-ws"
    assert lines[1] == 'tool-call ::= "<tool_call>" tool-ws tool-call-body tool-ws "</tool_call>"'
    assert "tool-call-body ::= alt" in lines and sum(x.startswith("root ::=") for x in lines) == 1


@pytest.mark.parametrize(
    ("output", "start"),
    [
        ("Sure. <tool_call>", 6),
        ("<tool_call>", 0),
        ("<tool_call>\n", 0),
        ('x <tool_call>\n{"', 2),
        ("<tool_call> {", 0),
        ("a <tool_call> b <tool_call>\n", 16),
    ],
)
def test_trigger_fires_only_where_the_grammar_can_take_over(output: str, start: int) -> None:
    """The trigger matches output ending in the open tag (and what the grammar certainly accepts
    next), and the grammar starts at the tag."""
    (trigger,) = HERMES.grammar(TOOLS, fake_gbnf).triggers
    m = ecma_search(trigger, output)
    assert m is not None and m.start(1) == start


@pytest.mark.parametrize(
    "output", ["<tool_call", "<tool_call>x", '<tool_call>\n{"na', "<tool_call>\n\n\n\n\n", "<tool_call>{{"]
)
def test_trigger_waits_while_the_text_after_the_tag_might_not_fit(output: str) -> None:
    """Text after the tag the grammar might reject never triggers it (llama.cpp would abort)."""
    (trigger,) = HERMES.grammar(TOOLS, fake_gbnf).triggers
    assert ecma_search(trigger, output) is None
