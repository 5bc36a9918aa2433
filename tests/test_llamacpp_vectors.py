"""The llama.cpp runtime's embed and score with the real embedded SmolLM2: real numbers, so the
checks are of meaning with a margin (similar texts closer than unrelated ones), never exact values."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import pytest

from rkllmd.embedding import PROGRESS_MARK, cut_to_fit, rerank_text
from rkllmd.errors import ContextExceeded, RuntimeFailure
from rkllmd.runtime.llamacpp.runtime import LlamaCppRuntime
from tests.helpers import open_smollm2

pytestmark = pytest.mark.model


def _open(kind: str, **kw: object) -> LlamaCppRuntime:
    rt: LlamaCppRuntime = open_smollm2(max_context_len=256, kind=kind, **kw)
    return rt


@pytest.fixture(scope="module")
def embedder() -> Iterator[LlamaCppRuntime]:
    rt = _open("embedding", pooling="mean")
    yield rt
    rt.close()


def cos(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


def test_similar_texts_are_closer_than_unrelated_ones(embedder: LlamaCppRuntime) -> None:
    marks: list[str] = []
    res = embedder.embed(
        [
            "The cat sleeps on the warm sofa.",
            "A kitten is napping on the couch.",
            "Quarterly tax filings are due in April.",
        ],
        lambda t, _i: marks.append(t),
    )
    cat, kitten, tax = res.vectors
    assert "".join(marks) == PROGRESS_MARK * 3
    assert all(math.isclose(cos(v, v), 1.0, rel_tol=1e-6) for v in res.vectors)
    assert len(cat) == 576  # SmolLM2-135M's hidden size
    assert cos(cat, kitten) > cos(cat, tax) + 0.05
    assert res.prompt_tokens is not None and res.prompt_tokens > 10


def test_the_same_text_gives_the_same_vector_alone_or_in_a_batch(embedder: LlamaCppRuntime) -> None:
    alone = embedder.embed(["hello world"], lambda t, i: None).vectors[0]
    batch = embedder.embed(["something else", "hello world"] * 10, lambda t, i: None).vectors
    assert len(batch) == 20
    assert cos(alone, batch[1]) > 0.999 and cos(alone, batch[19]) > 0.999


def test_an_input_longer_than_the_context_is_refused_by_index(embedder: LlamaCppRuntime) -> None:
    with pytest.raises(ContextExceeded, match="input 1 is"):
        embedder.embed(["short", "word " * 400], lambda t, i: None)


def test_abort_stops_between_batches(embedder: LlamaCppRuntime) -> None:
    marks: list[str] = []

    def progress(text: str, _i: int | None) -> None:
        marks.append(text)
        threading.Thread(target=embedder.abort).start()  # arrives while the run goes on

    res = embedder.embed([f"text number {i}" for i in range(64)], progress)
    assert res.aborted and 16 <= len(res.vectors) < 64


def test_a_chat_model_refuses_to_embed() -> None:
    rt = _open("chat")
    try:
        with pytest.raises(RuntimeFailure, match="not opened for embeddings"):
            rt.embed(["x"], lambda t, i: None)
    finally:
        rt.close()


def test_rerank_scores_are_probabilities_and_follow_the_yes_no_logits() -> None:
    rt = _open("rerank")
    try:
        cfg = rt.cfg
        query = "What is the capital of France?"
        docs = [
            "Paris is the capital of France.",
            "Bananas are a yellow fruit.",
            "Paris is the capital of France.",
        ]
        prompts = [rerank_text(cfg.rerank_template, cfg.rerank_instruction, query, d) for d in docs]
        res = rt.score(prompts, lambda t, i: None)
        assert len(res.scores) == 3 and all(0.0 < s < 1.0 for s in res.scores)
        assert math.isclose(res.scores[0], res.scores[2], rel_tol=1e-5)  # no state between prompts
        assert res.prompt_tokens is not None and res.prompt_tokens > 3 * 50
    finally:
        rt.close()


def test_cut_to_fit_keeps_the_longest_start_within_the_limit_by_the_models_tokens(
    embedder: LlamaCppRuntime,
) -> None:
    """Ollama's truncate with SmolLM2's BPE tokenizer: the start kept is within the limit in the
    template, one character more is not, and a text that fits comes back whole."""
    text = "Embeddings turn text into vectors; similar meanings land close together. " * 20
    template = "query: {text}"

    def count(s: str) -> int:
        n = embedder.count_tokens(s)
        assert n is not None
        return n

    assert count(template.replace("{text}", text)) > 100
    cut = cut_to_fit(text, template, count, 100)
    assert cut is not None and text.startswith(cut) and 90 < count(template.replace("{text}", cut)) <= 100
    assert count(template.replace("{text}", text[: len(cut) + 1])) > 100
    assert cut_to_fit("short text", template, count, 100) == "short text"
    assert cut_to_fit(text, template, lambda _s: None, 100) is None  # a runtime that cannot count
