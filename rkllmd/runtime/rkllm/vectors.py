"""Embeddings and rerank scores from librkllmrt.so: one ``rkllm_run`` per text in a vector mode.

``RKLLM_INFER_GET_LAST_HIDDEN_LAYER`` hands the result callback ``last_hidden_layer``
(``hidden_states``: ``num_tokens`` rows of ``embd_size`` floats, valid only during the callback);
the model's ``pooling`` takes the last row or the mean of the rows, then the vector is
L2-normalised. ``RKLLM_INFER_GET_LOGITS`` hands ``logits`` (``num_tokens`` rows of ``vocab_size``
floats); the last row's values at the model's two answer tokens make the score
(rkllmd.embedding.yes_no_score). Only what is needed is copied, inside the callback.

Threads: as the runtime's generate: ``run_vectors`` on the inference thread, which the runtime
also calls back on; abort() from any thread sets the runtime's flag, seen between texts.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Sequence
from ctypes import c_float, c_void_p
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rkllmd import logface
from rkllmd.embedding import (
    PROGRESS_MARK,
    EmbedResult,
    Progress,
    RerankResult,
    normalized,
    yes_no_score,
)
from rkllmd.errors import RuntimeCallError, RuntimeFailure
from rkllmd.runtime.rkllm import _abi_common as c
from rkllmd.runtime.rkllm._handle import RkllmHandle
from rkllmd.runtime.rkllm._lib import RkllmLibrary
from rkllmd.runtime.rkllm.counter import load_tokenizer

if TYPE_CHECKING:  # in a worker process the settings are Tables of the same names
    from rkllmd.runtime.rkllm.settings import RkllmModelSettings

log = logface.get_logger(__name__)


@dataclass
class VectorRun:
    """What the callbacks of one vector-mode run hand over (written on the run's thread)."""

    mode: int
    pooling: str = "last"
    token_ids: tuple[int, int] = (0, 0)
    vector: list[float] | None = None
    rows: int = 0  # hidden-state rows the runtime gave
    logits: tuple[float, float] | None = None
    prefill_tokens: int | None = None
    error: bool = False
    problem: str | None = None  # what the result lacked (no rows, an id beyond the vocabulary)
    seen: list[int] = field(default_factory=list)

    def on_result(self, state: int, result: Any) -> None:
        """The result callback's body; copies and never raises into C (the handle swallows)."""
        self.seen.append(state)
        if state == c.RKLLM_RUN_ERROR:
            self.error = True
        elif state == c.RKLLM_RUN_FINISH:
            if result is not None and hasattr(result, "perf"):
                self.prefill_tokens = int(result.perf.prefill_tokens) or None
        elif state == c.RKLLM_RUN_NORMAL and result is not None:
            if self.mode == c.RKLLM_INFER_GET_LAST_HIDDEN_LAYER:
                self._hidden(result.last_hidden_layer)
            else:
                self._logits(result.logits)

    def _hidden(self, layer: Any) -> None:
        n, d = int(layer.num_tokens), int(layer.embd_size)
        addr = ctypes.cast(layer.hidden_states, c_void_p).value
        if not addr or n <= 0 or d <= 0:
            self.problem = f"the runtime gave no hidden states (num_tokens {n}, embd_size {d})"
            return
        self.rows = n
        if self.pooling == "last" or n == 1:
            self.vector = list((c_float * d).from_address(addr + (n - 1) * d * 4))
            return
        flat = list((c_float * (n * d)).from_address(addr))
        self.vector = [math.fsum(flat[j::d]) / n for j in range(d)]

    def _logits(self, lg: Any) -> None:
        n, v = int(lg.num_tokens), int(lg.vocab_size)
        addr = ctypes.cast(lg.logits, c_void_p).value
        if not addr or n <= 0 or v <= 0:
            self.problem = f"the runtime gave no logits (num_tokens {n}, vocab_size {v})"
            return
        yes, no = self.token_ids
        if not (0 <= yes < v and 0 <= no < v):
            self.problem = f"answer token ids {yes}, {no} are beyond the vocabulary of {v}"
            return
        row = (c_float * v).from_address(addr + (n - 1) * v * 4)
        self.logits = (float(row[yes]), float(row[no]))


def run_vectors(
    handle: RkllmHandle,
    spec: c.AbiSpec,
    texts: Sequence[str],
    run: Callable[[], VectorRun],
    progress: Progress,
    install: Callable[[VectorRun | None], None],
    aborted: Callable[[], bool],
) -> tuple[list[VectorRun], bool]:
    """One run per text, in order, each with a fresh ``run()`` collector installed for the
    callback; returns the collectors and whether abort() ended it early. RuntimeFailure when a
    run fails or hands over nothing usable."""
    done: list[VectorRun] = []
    for i, text in enumerate(texts):
        if aborted():
            return done, True
        vr = run()
        prompt = text.encode()
        rin = spec.Input()
        if spec.has_role:
            rin.role = b"user"
            rin.enable_thinking = False
        rin.input_type = c.RKLLM_INPUT_PROMPT
        rin.prompt_input = prompt
        infer = spec.InferParam()
        infer.mode = vr.mode
        infer.keep_history = 0  # every text on its own: no state left from the one before
        if spec.per_run_limits:
            infer.max_new_tokens = 1
        install(vr)
        try:
            rc = handle.run(rin, infer)
        finally:
            install(None)
        del prompt  # alive until here on purpose: the runtime reads it during the run
        if aborted():
            return done, True
        if vr.error or rc != 0:
            raise RuntimeCallError("rkllm_run", rc if rc != 0 else -1, f"input {i}: the run failed")
        got = vr.vector if vr.mode == c.RKLLM_INFER_GET_LAST_HIDDEN_LAYER else vr.logits
        if got is None:
            raise RuntimeFailure(f"input {i}: {vr.problem or 'the runtime returned no result'}")
        done.append(vr)
        progress(PROGRESS_MARK, None)
    return done, False


def embedding_of(vr: VectorRun) -> list[float]:
    assert vr.vector is not None
    return normalized(vr.vector)


def score_of(vr: VectorRun) -> float:
    assert vr.logits is not None
    return yes_no_score(*vr.logits)


def answer_token_ids(
    configured: Sequence[int] | None, words: Sequence[str], tokenizer: Any
) -> tuple[int, int]:
    """The ids of the two answer tokens: as configured, else each word's single token in the
    model's tokenizer.json; RuntimeFailure when neither gives them."""
    if configured is not None:
        return int(configured[0]), int(configured[1])
    if tokenizer is None:
        raise RuntimeFailure(
            "a rerank model needs rerank_token_ids, or a tokenizer to look its answer tokens up in"
        )
    ids = []
    for word in words:
        found = tokenizer.encode(word, add_special_tokens=False).ids
        if len(found) != 1:
            raise RuntimeFailure(f"the answer {word!r} is {len(found)} tokens in the tokenizer, not one")
        ids.append(int(found[0]))
    return ids[0], ids[1]


def _tokens(runs: list[VectorRun]) -> int | None:
    """The prompt tokens of the runs as the runtime counted them (1.2.1+), or None."""
    counts = [r.prefill_tokens for r in runs]
    return sum(n for n in counts if n is not None) if runs and None not in counts else None


class VectorModes:
    """The runtime's embed and score, its result callback's way to them, and the model's
    tokenizer (a part of rkllmd.runtime.rkllm.runtime.RkllmRuntime, which owns the attributes
    declared here); inference thread, the callback on the thread blocked in rkllm_run."""

    name: str
    cfg: RkllmModelSettings
    handle: RkllmHandle | None
    lib: RkllmLibrary | None
    _vec: VectorRun | None = None  # the vector-mode run in progress
    _tokenizer: Any
    _last_template: tuple[str, str, str] | None
    _abort_requested: bool
    _generating: bool

    def _on_result(self, state: int, result: Any) -> None: ...

    def _on_callback(self, state: int, result: Any) -> None:
        """The result callback: a vector-mode run's collector, else the generation's handler."""
        vec = self._vec
        if vec is not None:
            vec.on_result(state, result)
        else:
            self._on_result(state, result)

    def _tok(self) -> Any:
        """The model's tokenizer.json, loaded on first use; None when it has none."""
        if self._tokenizer is None and self.cfg.tokenizer is not None:
            self._tokenizer = load_tokenizer(self.cfg.tokenizer)
        return self._tokenizer

    def embed(self, texts: Sequence[str], progress: Progress) -> EmbedResult:
        """RKLLM_INFER_GET_LAST_HIDDEN_LAYER per text, pooled as the model says, L2-normalised."""
        mode, pooling = c.RKLLM_INFER_GET_LAST_HIDDEN_LAYER, self.cfg.pooling
        runs, aborted = self._vectors(texts, lambda: VectorRun(mode, pooling), progress)
        if pooling == "mean" and any(r.rows == 1 and (r.prefill_tokens or 0) > 1 for r in runs):
            # This runtime hands over the last position only: the mean is the last token's state.
            log.warning("rkllm_hidden_states_last_only", model=self.name, pooling=pooling)
        return EmbedResult([embedding_of(r) for r in runs], _tokens(runs), aborted)

    def score(self, prompts: Sequence[str], progress: Progress) -> RerankResult:
        """RKLLM_INFER_GET_LOGITS per prompt; the yes/no logits of the last position make the score."""
        cfg = self.cfg
        ids = answer_token_ids(cfg.rerank_token_ids, cfg.rerank_tokens, self._tok())
        make = lambda: VectorRun(c.RKLLM_INFER_GET_LOGITS, token_ids=ids)  # noqa: E731
        runs, aborted = self._vectors(prompts, make, progress)
        return RerankResult([score_of(r) for r in runs], _tokens(runs), aborted)

    def _vectors(
        self, texts: Sequence[str], make: Callable[[], VectorRun], progress: Progress
    ) -> tuple[list[VectorRun], bool]:
        handle, lib = self.handle, self.lib
        if handle is None or lib is None:
            raise RuntimeFailure("the RKLLM model is not open", model=self.name)
        if self._last_template != ("", "", ""):  # the text exactly as the model's template wrote it
            handle.set_chat_template("", "", "")
            self._last_template = ("", "", "")
        self._abort_requested, self._generating = False, True

        def install(vr: VectorRun | None) -> None:
            self._vec = vr

        try:
            return run_vectors(
                handle, lib.spec, texts, make, progress, install, lambda: self._abort_requested
            )
        finally:
            self._generating = False
