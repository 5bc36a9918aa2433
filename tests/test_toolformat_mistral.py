"""The Mistral format's own cases (tests/test_toolformats.py runs the shared contract): both forms
of Mistral's calls, the ids and results its templates need, the templates ``auto`` recognises,
and its grammar in llama.cpp.

The call text is what mistral-common (mistralai/mistral-common @ bc022b91, tokens/tokenizers/
instruct.py) writes for an assistant turn with calls, per tokenizer version: v3 a JSON list after
the tag (sentencepiece decodes it with a space: ``[TOOL_CALLS] [``), v11 ``name[CALL_ID]id[ARGS]``,
v13 ``name[ARGS]`` per call. Templates: tests/fixtures/README.md.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from rkllmd import toolcalls
from rkllmd.generation import ChatMessage, ToolCall
from rkllmd.toolcalls.formats.mistral import FORMAT as MISTRAL
from rkllmd.toolcalls.formats.mistral import mistral_id
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
            "name": "get_current_weather",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string"},
                    "format": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location", "format"],
            },
        },
    }
]
PARIS = ("get_current_weather", {"location": "Paris, France", "format": "celsius"})
ROME = ("get_current_weather", {"location": "Rome, Italy", "format": "celsius"})
ARGS_PARIS = '{"location": "Paris, France", "format": "celsius"}'
ARGS_ROME = '{"location": "Rome, Italy", "format": "celsius"}'


@pytest.mark.parametrize(
    ("output", "calls"),
    [
        (f'[TOOL_CALLS] [{{"name": "get_current_weather", "arguments": {ARGS_PARIS}}}]', [PARIS]),  # v3, spm
        (  # v3 Tekken (Nemo, Ministral), with the model's own 9-character id
            f'[TOOL_CALLS][{{"name": "get_current_weather", "arguments": {ARGS_PARIS}, "id": "Zf3kQ9xLm"}}]',
            [PARIS],
        ),
        (
            f'[TOOL_CALLS][{{"name": "get_current_weather", "arguments": {ARGS_PARIS}}}, '
            f'{{"name": "get_current_weather", "arguments": {ARGS_ROME}}}]',
            [PARIS, ROME],
        ),
        (f"[TOOL_CALLS]get_current_weather[CALL_ID]a1B2c3D4e[ARGS]{ARGS_PARIS}", [PARIS]),  # v11
        (  # v13, parallel
            f"[TOOL_CALLS]get_current_weather[ARGS]{ARGS_PARIS}[TOOL_CALLS]get_current_weather[ARGS]{ARGS_ROME}",
            [PARIS, ROME],
        ),
        (f"[TOOL_CALLS]get_current_weather[ARGS]{json.dumps(ARGS_PARIS)}", [PARIS]),  # arguments as a string
    ],
)
def test_what_mistral_writes_is_calls(output: str, calls: list[Any]) -> None:
    """Each form, one character at a time and whole: the calls, no markup in the text."""
    for deltas in (list(output), [output]):
        text, p = parse(MISTRAL, TOOLS, deltas)
        assert calls_of(p) == calls and not p.problems and text == ""


def test_text_before_the_tag_streams_and_text_after_a_call_comes_at_the_end() -> None:
    p = MISTRAL.parser(TOOLS)
    assert p.feed("Let me check. [TOOL_") == "Let me check. "
    assert p.feed(f"CALLS]get_current_weather[ARGS]{ARGS_PARIS}") == ""
    assert p.finish() == "" and calls_of(p) == [PARIS]
    text, p = parse(MISTRAL, TOOLS, [f"[TOOL_CALLS]get_current_weather[ARGS]{ARGS_PARIS} Done."])
    assert text == " Done." and calls_of(p) == [PARIS]


@pytest.mark.parametrize(
    "output",
    ["See [TOOLS] and [CALLS].", "[TOOL_CALL] is not the tag", "Arrays like [1, 2] and [ARGS] are text"],
)
def test_text_that_only_looks_like_the_tag_is_text(output: str) -> None:
    text, p = parse(MISTRAL, TOOLS, list(output))
    assert text == output and not p.calls and not p.problems


@pytest.mark.parametrize(
    "output",
    [
        "[TOOL_CALLS]",
        '[TOOL_CALLS][{"name": "get_current_weather", "arguments": {"location": }}]',
        '[TOOL_CALLS][{"name": "get_current_weather", "arguments": {"location": "Paris"}',
        "[TOOL_CALLS]get_current_weather[ARGS][1, 2]",
        "[TOOL_CALLS]get_current_weather {}",
        '[TOOL_CALLS][{"name": "get_current_weather", "arguments": {"days": 1e999}}]',
        '[TOOL_CALLS][{"arguments": {}}]',
    ],
)
def test_a_malformed_call_is_withheld_and_recorded(output: str) -> None:
    """The tag alone, broken JSON, a list cut off, non-object arguments, no [ARGS], a number no
    reply can carry, no name: no call, nothing spoken, the reason recorded."""
    text, p = parse(MISTRAL, TOOLS, [output])
    assert text == "" and not p.calls and p.problems


def test_a_good_call_next_to_a_malformed_one_still_acts() -> None:
    out = f"[TOOL_CALLS]get_current_weather[ARGS]{{oops}}[TOOL_CALLS]get_current_weather[ARGS]{ARGS_ROME}"
    text, p = parse(MISTRAL, TOOLS, [out])
    assert calls_of(p) == [ROME] and len(p.problems) == 1 and text == ""


def test_ids_are_nine_letters_and_digits_and_a_result_answers_its_call() -> None:
    """Mistral's templates refuse other ids: a call and its result carry the same 9 characters,
    whatever id the client used."""
    for raw in ("call_4f1c2a9b8e7d6c5b4a3f2e1d", "call_1", "x", None):
        assert len(mistral_id(raw)) == 9 and mistral_id(raw).isalnum()
    call = ToolCall("call_4f1c2a9b8e7d6c5b4a3f2e1d", "get_current_weather", dict(PARIS[1]))
    turn = MISTRAL.render_call_turn(ChatMessage("assistant", "", (call,)))
    assert mistral_id(call.id) == "b4a3f2e1d" and mistral_id("call_1") == "0000call1"
    assert json.loads(turn.removeprefix("[TOOL_CALLS]"))[0] == {
        "name": PARIS[0],
        "arguments": PARIS[1],
        "id": "b4a3f2e1d",
    }
    result = MISTRAL.render_tool_result(ChatMessage("tool", '{"temp": 18}', tool_call_id=call.id))
    assert (
        result
        == f'[TOOL_RESULTS]{{"content": {{"temp": 18}}, "call_id": "{mistral_id(call.id)}"}}[/TOOL_RESULTS]'
    )
    plain = MISTRAL.render_tool_result(ChatMessage("tool", "sunny", tool_call_id=call.id))
    assert json.loads(plain[len("[TOOL_RESULTS]") : -len("[/TOOL_RESULTS]")])["content"] == "sunny"


def test_tools_are_offered_between_the_available_tools_tags() -> None:
    text = MISTRAL.render_tools("Be brief.", TOOLS)
    assert text.startswith("Be brief.\n\n[AVAILABLE_TOOLS]") and text.endswith("[/AVAILABLE_TOOLS]")
    assert json.loads(text[len("Be brief.\n\n[AVAILABLE_TOOLS]") : -len("[/AVAILABLE_TOOLS]")]) == TOOLS


@pytest.mark.parametrize(
    "fixture",
    [
        "mistral-nemo-instruct-2407.jinja",
        "mistral-small-3.1-24b-instruct-2503.jinja",
        "mistral-common-v13.jinja",
    ],
)
def test_auto_recognises_mistrals_templates(fixture: str) -> None:
    assert toolcalls.choose("auto", (FIXTURES / fixture).read_text(), "model.gguf").name == "mistral"


def test_auto_recognises_mistral_by_name() -> None:
    for name in (
        "Mistral-7B-Instruct-v0.3-Q4_K_M.gguf",
        "Ministral-8B-Instruct-2410.rkllm",
        "Devstral-Small",
    ):
        assert toolcalls.choose("auto", None, name).name == "mistral"


def test_the_grammar_holds_the_list_form_once_it_has_begun(smol_vocab: Any) -> None:
    """On llama.cpp: after ``[TOOL_CALLS][`` only a call object may follow, its name an offered
    tool's; the tag followed by a name (v11+) and text before the tag stay free."""
    assert allowed_after(smol_vocab, MISTRAL, TOOLS, "[TOOL_CALLS][") <= {" ", " {", ' {"', "{", '{"'}
    after_name = allowed_after(smol_vocab, MISTRAL, TOOLS, '[TOOL_CALLS][{"name": "')
    assert after_name and all("get_current_weather".startswith(p) for p in after_name)
    assert len(allowed_after(smol_vocab, MISTRAL, TOOLS, "[TOOL_CALLS]get_current_weather")) > 40000
    assert len(allowed_after(smol_vocab, MISTRAL, TOOLS, "Sure, [")) > 40000


# The id check of Mistral Nemo's template (tests/fixtures/mistral-nemo-instruct-2407.jinja), around
# a minimal loop over the turns.
ID_CHECKING_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.tool_calls is defined and message.tool_calls is not none %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if not tool_call.id is defined or tool_call.id|length != 9 %}"
    '{{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}{%- endif %}'
    "{{- '[TOOL_CALLS]' + tool_call.id }}{%- endfor %}"
    "{%- elif message.role == 'tool' %}"
    "{%- if message.tool_call_id|length != 9 %}"
    '{{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}{%- endif %}'
    "{{- '[TOOL_RESULTS]' + message.tool_call_id }}"
    "{%- else %}{{- message.content }}{%- endif %}{%- endfor %}"
)


def test_llamacpp_gives_mistrals_own_template_ids_it_accepts() -> None:
    """On llama.cpp a Mistral GGUF's template renders earlier turns itself and refuses rkllmd's
    ``call_<hex>`` ids: the turns it gets carry the 9-character ids, the same for the call and its
    result (llama-cpp-python's Jinja2 formatter, as the runtime uses it)."""
    lib = pytest.importorskip("llama_cpp")
    from rkllmd.runtime.llamacpp.runtime import _message

    call = ToolCall("call_4f1c2a9b8e7d6c5b4a3f2e1d", "get_current_weather", dict(PARIS[1]))
    turns = [
        ChatMessage("user", "weather?"),
        ChatMessage("assistant", "", (call,)),
        ChatMessage("tool", "sunny", tool_call_id=call.id),
    ]
    formatter = lib.llama_chat_format.Jinja2ChatFormatter(ID_CHECKING_TEMPLATE, "</s>", "<s>")
    prompt = formatter(messages=[_message(m, True, MISTRAL) for m in turns]).prompt
    assert prompt.endswith("[TOOL_CALLS]b4a3f2e1d[TOOL_RESULTS]b4a3f2e1d")
    with pytest.raises(Exception, match="length 9"):  # what the ids were before
        formatter(messages=[_message(m, True, toolcalls.get("hermes")) for m in turns])


@pytest.fixture(scope="module")
def smollm2() -> Iterator[Any]:
    yield from smollm2_as("mistral")


@pytest.mark.model
def test_llamacpp_grammar_makes_the_model_write_this_familys_call(smollm2: Any) -> None:
    """tool_choice required on llama.cpp: SmolLM2 (no tool template: rkllmd offers the tools in
    this family's words) writes a call in this family's syntax, and the parser reads it."""
    assert smollm2.describe()["tool_format"] == "mistral"
    assert_writes_its_call(smollm2, TOOLS)
