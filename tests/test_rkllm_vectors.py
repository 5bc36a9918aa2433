"""RkllmRuntime's embed and rerank through ctypes against the C double, for each ABI family: the
vectors and scores are checked exactly against what the double derives from the text
(tests/fake_rkllm/vectors.py)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from rkllmd.embedding import PROGRESS_MARK, normalized, rerank_text, yes_no_score
from rkllmd.errors import RuntimeCallError, RuntimeFailure
from rkllmd.runtime.rkllm.runtime import RkllmRuntime
from rkllmd.runtime.rkllm.settings import RkllmSettings
from tests.fake_rkllm import vectors
from tests.rkllm_conftest_fixtures import FakeIntrospect, fake_library, model_settings

ABIS = ["12", "13", "131", "120"]


@pytest.fixture(params=ABIS)
def abi(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_rt(tmp_path: Path) -> Iterator[Any]:
    model = tmp_path / "model.rkllm"
    model.write_bytes(b"not really a model")
    opened: list[RkllmRuntime] = []

    def make(abi: str, **cfg: Any) -> RkllmRuntime:
        rt = RkllmRuntime(
            "m", model_settings(model, fake_library(abi), **cfg), RkllmSettings(), capture_stdout=False
        )
        opened.append(rt)
        rt.open()
        return rt

    yield make
    for rt in opened:
        rt.close()


class Marks:
    def __init__(self) -> None:
        self.text = ""

    def __call__(self, text: str, token_id: int | None) -> None:
        self.text += text


def _close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-7) for x, y in zip(a, b, strict=True)
    )


def test_last_token_pooling_is_the_last_rows_normalised(make_rt: Any, abi: str) -> None:
    rt = make_rt(abi, kind="embedding", pooling="last")
    marks = Marks()
    texts = ["the cat sat", "a dog ran far", "x"]
    res = rt.embed(texts, marks)
    assert not res.aborted
    assert marks.text == PROGRESS_MARK * 3
    for text, vec in zip(texts, res.vectors, strict=True):
        assert _close(vec, normalized(vectors.hidden_rows(text)[-1]))
        assert math.isclose(math.fsum(x * x for x in vec), 1.0, rel_tol=1e-9)
    if abi != "120":  # 1.2.0 reports no perf: no count
        assert res.prompt_tokens == 3 + 4 + 1


def test_mean_pooling_averages_every_row(make_rt: Any, abi: str) -> None:
    rt = make_rt(abi, kind="embedding", pooling="mean")
    text = "one two three four"
    rows = vectors.hidden_rows(text)
    mean = [math.fsum(r[j] for r in rows) / len(rows) for j in range(16)]
    (vec,) = rt.embed([text], Marks()).vectors
    assert _close(vec, normalized(mean))


def test_embedding_model_sends_the_text_without_a_chat_template(make_rt: Any) -> None:
    # The double prefills the template strings too: a template left on would change the vector.
    rt = make_rt("13", kind="embedding", system_prompt="you are a helpful assistant")
    (vec,) = rt.embed(["plain words"], Marks()).vectors
    assert _close(vec, normalized(vectors.hidden_rows("plain words")[-1]))
    assert FakeIntrospect(fake_library("13")).text("prompt") == "plain words"


def test_rerank_scores_from_the_yes_no_logits_of_the_last_position(make_rt: Any, abi: str) -> None:
    rt = make_rt(abi, kind="rerank", rerank_token_ids=(7, 3))
    docs = ["paris is the capital of france", "bananas are yellow"]
    marks = Marks()
    cfg = rt.cfg
    prompts = [rerank_text(cfg.rerank_template, cfg.rerank_instruction, "capital of france", d) for d in docs]
    res = rt.score(prompts, marks)
    assert marks.text == PROGRESS_MARK * 2
    for prompt, score in zip(prompts, res.scores, strict=True):
        logits = vectors.last_logits(prompt)
        assert math.isclose(score, yes_no_score(logits[7], logits[3]), rel_tol=1e-9)
        assert 0.0 < score < 1.0


def test_rerank_without_token_ids_or_tokenizer_says_what_is_missing(make_rt: Any) -> None:
    rt = make_rt("13", kind="rerank")
    with pytest.raises(RuntimeFailure, match="rerank_token_ids"):
        rt.score(["q d"], Marks())


def test_answer_ids_beyond_the_vocabulary_are_an_error(make_rt: Any) -> None:
    rt = make_rt("13", kind="rerank", rerank_token_ids=(64, 3))  # the double's vocabulary is 64
    with pytest.raises(RuntimeFailure, match="beyond the vocabulary of 64"):
        rt.score(["q d"], Marks())


def test_a_failed_run_names_the_input(make_rt: Any) -> None:
    rt = make_rt("13", kind="embedding")
    with pytest.raises(RuntimeCallError, match="input 1"):
        rt.embed(["fine", "bad [[fail_at=1]]", "never"], Marks())
    # the runtime stays usable
    assert len(rt.embed(["again"], Marks()).vectors) == 1


def test_abort_ends_a_batch_between_inputs(make_rt: Any) -> None:
    rt = make_rt("13", kind="embedding")
    marks = Marks()
    texts = [f"text {i} [[delay_ms=200]]" for i in range(20)]
    t = threading.Timer(0.3, rt.abort)
    t.start()
    t0 = time.monotonic()
    res = rt.embed(texts, marks)
    t.join()
    assert res.aborted
    assert time.monotonic() - t0 < 2.0
    assert 0 < len(res.vectors) < 20 and len(marks.text) == len(res.vectors)


def test_mean_pooling_over_a_last_row_only_runtime_warns(
    make_rt: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_RKLLM_HIDDEN_LAST_ONLY", "1")  # read at rkllm_init
    rt = make_rt("13", kind="embedding", pooling="mean")
    with structlog.testing.capture_logs() as logs:
        (vec,) = rt.embed(["alpha beta gamma"], Marks()).vectors
    assert any(e["event"] == "rkllm_hidden_states_last_only" for e in logs)
    assert _close(vec, normalized(vectors.hidden_rows("alpha beta gamma")[-1]))
