"""The think switch reaches each runtime: RKLLMInput.enable_thinking on the C double (and the
thinking model it plays), a template suffix under rkllmd's own RKLLM template, and the GGUF
chat template's ``enable_thinking`` on llama.cpp with the real SmolLM2."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import structlog

from rkllmd import toolcalls
from rkllmd.generation import ChatMessage, GenerateInput, Sampling, Thinking
from rkllmd.runtime.llamacpp import embedded_model_path
from rkllmd.runtime.llamacpp.runtime import LlamaCppRuntime
from rkllmd.runtime.llamacpp.settings import LlamaCppModelSettings
from rkllmd.runtime.rkllm.prompt import wanted_template
from rkllmd.runtime.rkllm.runtime import RkllmRuntime
from rkllmd.runtime.rkllm.settings import RkllmSettings
from tests.rkllm_conftest_fixtures import FakeIntrospect, ask, fake_library, model_settings

HERMES = toolcalls.get("hermes")
THOUGHT = "The user greets me; a greeting back will do."
NO_THINK = "<think>\n\n</think>\n\n"


def thinking_prompt(answer: str) -> str:
    """A prompt that makes the double a thinking model: it thinks only when enable_thinking is set."""
    b64 = base64.b64encode(THOUGHT.encode()).decode()
    say = base64.b64encode(answer.encode()).decode()
    return f"[[think={b64}]] [[say={say}]] [[chunk=2]]"


def generate(rt: RkllmRuntime | LlamaCppRuntime, inp: GenerateInput) -> str:
    deltas: list[str] = []
    rt.generate(inp, lambda text, _tok: deltas.append(text))
    return "".join(deltas)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    p = tmp_path / "model.rkllm"
    p.write_bytes(b"not really a model")
    return p


@pytest.mark.parametrize("abi", ["12", "13", "131"])
def test_enable_thinking_reaches_the_rkllm_runtime(model: Path, abi: str) -> None:
    rt = RkllmRuntime("m", model_settings(model, fake_library(abi)), RkllmSettings(), capture_stdout=False)
    rt.open()
    try:
        fake = FakeIntrospect(fake_library(abi))
        inp = ask(thinking_prompt("Hello!"))
        assert generate(rt, inp) == "Hello!"  # thinking off, the default: the model answers at once
        assert fake.stat("last_enable_thinking") == 0
        out = generate(rt, replace(inp, thinking=Thinking(on=True)))
        assert fake.stat("last_enable_thinking") == 1
        assert out == f"<think>\n{THOUGHT}\n</think>\n\nHello!"  # the raw text: jobs.py splits it
    finally:
        rt.close()


def test_a_runtime_without_the_switch_says_so(model: Path) -> None:
    """1.2.0 has no enable_thinking: a request that asks to think runs, and the log says why it
    may not think."""
    lib = fake_library("120")
    rt = RkllmRuntime("m", model_settings(model, lib), RkllmSettings(), capture_stdout=False)
    rt.open()
    try:
        with structlog.testing.capture_logs() as logs:
            generate(rt, replace(ask("hi there"), thinking=Thinking(on=True)))
        assert any(e["event"] == "rkllm_cannot_switch_thinking" for e in logs)
        assert FakeIntrospect(lib).stat("last_enable_thinking") == -1
    finally:
        rt.close()


def test_under_our_template_the_switch_is_the_template_suffix(model: Path) -> None:
    """The runtime ignores enable_thinking under rkllm_set_chat_template: a Qwen3 model's
    configured no_thinking suffix closes the block when a run does not think, and only then."""
    tpl = {"system": "<|im_start|>system\n{system}<|im_end|>\n", "prefix": "U:", "postfix": "A:\n"}
    cfg = model_settings(model, fake_library("13"), chat_template={**tpl, "no_thinking": NO_THINK})
    off = ask("hi", system="Be brief.")
    assert wanted_template(cfg, off, True, HERMES) == (
        tpl["system"].replace("{system}", "Be brief."),
        "U:",
        "A:\n" + NO_THINK,
    )
    on = replace(off, thinking=Thinking(on=True))
    assert wanted_template(cfg, on, True, HERMES)[2] == "A:\n"
    plain = model_settings(model, fake_library("13"), chat_template=tpl)  # a model that does not think
    assert wanted_template(plain, off, True, HERMES)[2] == "A:\n"


@pytest.mark.parametrize("no_thinking", [NO_THINK, ""])
def test_the_template_suffix_is_what_switches_thinking_under_our_template(
    model: Path, no_thinking: str
) -> None:
    """With a system prompt rkllmd sets its own template, and the double (as the vendor runtime)
    then ignores enable_thinking: the configured no_thinking suffix is what keeps a Qwen3 model
    from thinking; without one it thinks anyway (and jobs.py keeps that thought apart)."""
    tpl = {"system": "S:{system}\n", "prefix": "U:", "postfix": "A:\n", "no_thinking": no_thinking}
    lib = fake_library("13")
    rt = RkllmRuntime(
        "m", model_settings(model, lib, chat_template=tpl), RkllmSettings(), capture_stdout=False
    )
    rt.open()
    try:
        inp = ask(thinking_prompt("Hello!"), system="Be brief.")
        off = generate(rt, inp)
        assert off == ("Hello!" if no_thinking else f"<think>\n{THOUGHT}\n</think>\n\nHello!")
        on = generate(rt, replace(inp, thinking=Thinking(on=True)))
        assert on == f"<think>\n{THOUGHT}\n</think>\n\nHello!"
    finally:
        rt.close()


# --- llama.cpp --------------------------------------------------------------------------------

# The generation prompt of Qwen3's chat template (tokenizer_config.json of Qwen/Qwen3-1.7B),
# after a ChatML loop: with enable_thinking false it closes an empty block for the model.
QWEN3_TAIL = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}{%- endif %}"
)


@pytest.fixture(scope="module")
def smollm2() -> Iterator[LlamaCppRuntime]:
    pytest.importorskip("llama_cpp")
    if embedded_model_path() is None:
        pytest.skip("embedded SmolLM2 missing")
    rt = LlamaCppRuntime(
        "smollm2", LlamaCppModelSettings(runtime="llamacpp", max_context_len=1024, n_threads=2)
    )
    rt.open()
    yield rt
    rt.close()


def test_the_switch_reaches_a_qwen3_template() -> None:
    lib = pytest.importorskip("llama_cpp")
    rt = LlamaCppRuntime("qwen3", LlamaCppModelSettings(runtime="llamacpp"))
    rt._llm = object()
    rt._formatter = lib.llama_chat_format.Jinja2ChatFormatter(template=QWEN3_TAIL, eos_token="", bos_token="")
    inp = GenerateInput((ChatMessage("user", "hi"),), 10)
    assert rt.render(inp).endswith("<|im_start|>assistant\n" + NO_THINK)
    assert rt.render(replace(inp, thinking=Thinking(on=True))).endswith("<|im_start|>assistant\n")


def test_smollm2_which_does_not_think_is_unchanged_by_the_switch(smollm2: LlamaCppRuntime) -> None:
    """SmolLM2's template has no thinking switch: the prompt and the greedy answer are the same."""
    inp = GenerateInput(
        (ChatMessage("user", "What is the capital of France?"),), 64, sampling=Sampling(temperature=0.0)
    )
    on = replace(inp, thinking=Thinking(on=True))
    assert smollm2.render(on) == smollm2.render(inp)
    answer = generate(smollm2, on)
    assert "Paris" in answer and answer == generate(smollm2, inp)


# DeepSeek-R1-Distill-Qwen's generation prompt (tokenizer_config.json of
# deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B, 2025-02 revision): the Assistant tag, then "<think>\n".
R1_TAIL = (
    "{% for m in messages %}{% if m.role == 'user' %}{{ '<\uff5cUser\uff5c>' + m.content }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<\uff5cAssistant\uff5c><think>\\n' }}{% endif %}"
)


def test_a_template_that_opens_the_thought_is_found_at_load() -> None:
    """R1's template opens <think> whatever is asked: its output starts inside the thought, so
    the splitter starts there (describe()'s fact, read by the loop for each run); Qwen3's and
    SmolLM2's do not."""
    lib = pytest.importorskip("llama_cpp")
    from rkllmd.runtime.llamacpp.runtime import thought_opens
    from rkllmd.thinking import opened_by_prompt

    def formatter(template: str) -> object:
        return lib.llama_chat_format.Jinja2ChatFormatter(template=template, eos_token="", bos_token="")

    r1 = thought_opens(formatter(R1_TAIL), "<think>")
    assert r1 == {"think": True, "no_think": True}
    assert thought_opens(formatter(QWEN3_TAIL), "<think>") == {"think": False, "no_think": False}
    facts = {"thought_opens_in_prompt": r1}
    assert opened_by_prompt(Thinking(on=False), facts).starts_open
    assert not opened_by_prompt(Thinking(on=True), {}).starts_open


def test_smollm2_reports_that_its_template_opens_nothing(smollm2: LlamaCppRuntime) -> None:
    assert smollm2.describe()["thought_opens_in_prompt"] == {"think": False, "no_think": False}
