"""The thought splitter (rkllmd/thinking.py) on real transcripts of thinking models, cut at every
byte, and the history a client replays with thought in it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rkllmd.generation import ChatMessage, GenerateInput, Thinking
from rkllmd.runtime.llamacpp.settings import LlamaCppModelSettings
from rkllmd.thinking import ThoughtSplitter, can_think, strip_thought, with_model_thinking, without_thought

QWEN3 = Thinking()
R1 = Thinking(starts_open=True)

# Qwen3-1.7B with enable_thinking (its chat template leaves the block to the model).
QWEN3_OUT = (
    "<think>\nOkay, the user wants the kitchen light on. I should call HassTurnOn with the name"
    " Kitchen Light.\n</think>\n\nSure, turning on the kitchen light."
)
QWEN3_THOUGHT = (
    "Okay, the user wants the kitchen light on. I should call HassTurnOn with the name Kitchen Light."
)
QWEN3_ANSWER = "Sure, turning on the kitchen light."
# DeepSeek-R1-Distill-Qwen: the template's generation prompt ends with the Assistant tag and
# "<think>\n", so the output starts inside the thought and only closes it.
R1_OUT = "Alright, 2 + 2 is 4 — simple arithmetic.\n</think>\n\nThe answer is **4**. ✓"
R1_THOUGHT = "Alright, 2 + 2 is 4 — simple arithmetic."
R1_ANSWER = "The answer is **4**. ✓"


def run(spec: Thinking, pieces: list[str]) -> tuple[str, str, ThoughtSplitter]:
    s = ThoughtSplitter(spec)
    thought, answer = [], []
    for p in pieces:
        t, a = s.feed(p)
        thought.append(t)
        answer.append(a)
    t, a = s.finish()
    return "".join(thought) + t, "".join(answer) + a, s


def cuts(text: str) -> list[list[str]]:
    """The text whole, one character at a time, and in two at every position."""
    return [[text], list(text)] + [[text[:i], text[i:]] for i in range(1, len(text))]


@pytest.mark.parametrize(
    ("spec", "out", "thought", "answer"),
    [(QWEN3, QWEN3_OUT, QWEN3_THOUGHT, QWEN3_ANSWER), (R1, R1_OUT, R1_THOUGHT, R1_ANSWER)],
    ids=["qwen3", "r1-distill"],
)
def test_thought_and_answer_apart_however_the_text_is_cut(
    spec: Thinking, out: str, thought: str, answer: str
) -> None:
    for pieces in cuts(out):
        got_thought, got_answer, s = run(spec, pieces)
        assert (got_thought, got_answer) == (thought, answer), pieces
        assert not s.unclosed


def test_a_model_that_does_not_think_is_passed_through_unchanged() -> None:
    """Not a byte lost or moved, leading whitespace and tag-like text included."""
    for out in ("\n  Hello there.", "<thinking is fun", "The <think> tag is Qwen3's.", "<", " <thi"):
        for pieces in cuts(out):
            assert run(QWEN3, pieces)[:2] == ("", out), pieces


def test_only_a_possible_tag_and_edge_whitespace_are_held() -> None:
    s = ThoughtSplitter(QWEN3)
    assert s.feed("<th") == ("", "")
    assert s.feed("ink>\nLet me see") == ("Let me see", "")
    assert s.feed(" now. </th") == (" now.", "")  # the space and a possible tag wait
    assert s.feed("ink>\n\nHi") == ("", "Hi")
    assert s.feed(" there") == ("", " there")  # after the block: straight through
    assert s.finish() == ("", "")


def test_a_block_that_never_closes_is_all_thought_and_reported() -> None:
    for pieces in cuts("<think>\nHmm, let me think about this for a very long"):
        thought, answer, s = run(QWEN3, pieces)
        assert thought == "Hmm, let me think about this for a very long" and answer == ""
        assert s.unclosed


def test_thought_deltas_are_counted_inside_the_block_only() -> None:
    s = ThoughtSplitter(QWEN3)
    for piece in ["<think>", "a", "b", "c", "</think>", "x", "y"]:
        s.feed(piece)
    assert s.thought_deltas == 4  # "a", "b", "c", "</think>": fed while inside
    r1 = ThoughtSplitter(R1)
    r1.feed("a")
    assert r1.in_thought and r1.thought_deltas == 1


def test_other_tags_per_model() -> None:
    spec = Thinking(open_tag="<|begin_of_thought|>", close_tag="<|end_of_thought|>")
    out = "<|begin_of_thought|>plan<|end_of_thought|>answer"
    for pieces in cuts(out):
        assert run(spec, pieces)[:2] == ("plan", "answer")


def test_history_loses_its_thought() -> None:
    assert strip_thought(QWEN3_OUT, QWEN3) == QWEN3_ANSWER
    assert strip_thought(R1_OUT, QWEN3) == R1_ANSWER  # a closing tag alone: the thought came first
    assert strip_thought("I use <think> tags.", QWEN3) == "I use <think> tags."
    assert strip_thought("plain answer", R1) == "plain answer"
    msgs = (
        ChatMessage("system", "<think>system text is not touched</think>"),
        ChatMessage("user", "<think>nor is the user's</think> hi"),
        ChatMessage("assistant", QWEN3_OUT),
        ChatMessage("user", "and now?"),
    )
    out = without_thought(msgs, QWEN3)
    assert [m.content for m in out] == [msgs[0].content, msgs[1].content, QWEN3_ANSWER, "and now?"]


def test_admission_gives_the_model_format_and_the_caps() -> None:
    cfg = LlamaCppModelSettings(
        runtime="llamacpp",
        thinking_tags=("<reason>", "</reason>"),
        thinking_starts_open=True,
        max_thinking_tokens=50,
    )
    inp = GenerateInput(
        messages=(ChatMessage("assistant", "why</reason>ok"), ChatMessage("user", "go")),
        max_tokens=100,
        thinking=Thinking(on=True),
    )
    got = with_model_thinking(inp, cfg).thinking
    assert got == Thinking(True, "<reason>", "</reason>", True, 50)
    assert with_model_thinking(inp, cfg).messages[0].content == "ok"
    asked = replace(inp, thinking=Thinking(on=False, max_tokens=7))
    assert with_model_thinking(asked, cfg).thinking.max_tokens == 7  # the request's cap first


@pytest.mark.parametrize(
    ("file", "thinks"),
    [
        ("Qwen3-1.7B-Q8_0.gguf", True),
        ("Qwen3-VL-2B-Thinking-Q4_K_M.gguf", True),
        ("DeepSeek-R1-Distill-Qwen-1.5B-Q4_K_M.gguf", True),
        ("QwQ-32B-Q4_K_M.gguf", True),
        ("Qwen3-4B-Instruct-2507-Q4_K_M.gguf", False),
        ("Qwen3-VL-2B-Instruct-Q4_K_M.gguf", False),
        ("Qwen3-Coder-30B-A3B-Instruct-Q4_K_M.gguf", False),
        ("Qwen2.5-1.5B-Instruct-Q4_K_M.gguf", False),
        ("SmolLM2-135M-Instruct-Q8_0.gguf", False),
    ],
)
def test_a_model_can_think_by_its_family(file: str, thinks: bool) -> None:
    """What Ollama's /api/show lists as ``thinking``: a family's name says it (docs/THINKING.md)."""
    cfg = LlamaCppModelSettings(runtime="llamacpp", path=f"/models/{file}")
    assert can_think("m", cfg) is thinks
    assert can_think("m", cfg.model_copy(update={"thinks": not thinks})) is not thinks
    assert can_think("m", cfg.model_copy(update={"thinking_starts_open": True})) is True
    assert can_think("m", cfg.model_copy(update={"kind": "embedding"})) is False
