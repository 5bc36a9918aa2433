"""Embeddings and rerank scores through llama-cpp-python (docs/EMBEDDINGS.md).

A context computes embeddings only when it is made for them (``Llama(embedding=True)``, with its
pooling), and then gives no logits to generate with; so the model's ``kind`` decides how
:meth:`LlamaCppRuntime.open` makes its one context (:func:`context_options`): no second context,
no reload per request. An embedding model embeds in batches (``Llama.embed`` packs several
sequences into one decode); a rerank model evaluates each prompt and reads the logits of its last
position at the two answer tokens.

Threads: the inference thread (the runtime's); abort() from any thread sets the runtime's flag,
seen between batches and prompts.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rkllmd.embedding import PROGRESS_MARK, EmbedResult, Progress, RerankResult, normalized, yes_no_score
from rkllmd.errors import ContextExceeded, RuntimeFailure

if TYPE_CHECKING:  # in a worker process the settings are a Table of the same names
    from rkllmd.runtime.llamacpp.settings import LlamaCppModelSettings

# Inputs per llama_decode when embedding: enough to fill the batch with short texts, few enough
# that progress (and a cancel) is seen often.
EMBED_BATCH = 16


def context_options(lib: Any, cfg: Any, n_ctx: int) -> dict[str, Any]:
    """Extra ``Llama()`` arguments for the model's kind: an embedding model's context pools (its
    ``pooling``), and takes a whole input in one batch (pooling needs every token in one ubatch)."""
    if cfg.kind != "embedding":
        return {}
    pooling = lib.LLAMA_POOLING_TYPE_LAST if cfg.pooling == "last" else lib.LLAMA_POOLING_TYPE_MEAN
    return {"embedding": True, "pooling_type": pooling, "n_batch": n_ctx, "n_ubatch": n_ctx}


class LlamaVectors:
    """The llama.cpp runtime's embed and score (a part of LlamaCppRuntime, which owns these)."""

    name: str
    cfg: LlamaCppModelSettings
    _lib: Any
    _abort: threading.Event

    def _require(self) -> Any: ...

    def _set_running(self, running: bool) -> None: ...

    def embed(self, texts: Sequence[str], progress: Progress) -> EmbedResult:
        """Pooled, L2-normalised vectors, EMBED_BATCH inputs per decode (inference thread)."""
        llm = self._require()
        if self.cfg.kind != "embedding":
            raise RuntimeFailure(
                f"model {self.name!r} was not opened for embeddings (kind {self.cfg.kind!r})"
            )
        n_ctx = llm.n_ctx()
        for i, text in enumerate(texts):
            n = len(llm.tokenize(text.encode("utf-8")))
            if n > n_ctx:
                raise ContextExceeded(
                    f"input {i} is {n} tokens; model {self.name!r} has a context of {n_ctx}",
                    prompt_tokens=n,
                    context_length=n_ctx,
                )
        vectors: list[list[float]] = []
        tokens = 0
        self._set_running(True)
        try:
            for start in range(0, len(texts), EMBED_BATCH):
                if self._abort.is_set():
                    return EmbedResult(vectors, tokens, aborted=True)
                chunk = list(texts[start : start + EMBED_BATCH])
                try:
                    out, count = llm.embed(chunk, normalize=False, truncate=False, return_count=True)
                except (RuntimeError, ValueError) as exc:
                    raise RuntimeFailure(f"llama.cpp failed to embed inputs {start}..: {exc}") from exc
                vectors.extend(normalized(v) for v in out)
                tokens += int(count)
                progress(PROGRESS_MARK * len(chunk), None)
        finally:
            self._set_running(False)
        return EmbedResult(vectors, tokens)

    def score(self, prompts: Sequence[str], progress: Progress) -> RerankResult:
        """P(yes) per prompt from the last position's logits (inference thread)."""
        llm, lib = self._require(), self._lib
        if self.cfg.kind != "rerank":
            raise RuntimeFailure(f"model {self.name!r} was not opened for reranking (kind {self.cfg.kind!r})")
        configured = self.cfg.rerank_token_ids
        yes, no = configured or tuple(self._answer_id(llm, w) for w in self.cfg.rerank_tokens)
        n_ctx, tokens = llm.n_ctx(), 0
        scores: list[float] = []
        self._set_running(True)
        try:
            for i, prompt in enumerate(prompts):
                if self._abort.is_set():
                    return RerankResult(scores, tokens, aborted=True)
                ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
                if len(ids) >= n_ctx:
                    raise ContextExceeded(
                        f"document {i} makes a prompt of {len(ids)} tokens; model {self.name!r} has a "
                        f"context of {n_ctx}",
                        prompt_tokens=len(ids),
                        context_length=n_ctx,
                    )
                llm.reset()
                try:
                    llm.eval(ids)
                except RuntimeError as exc:
                    llm.reset()
                    raise RuntimeFailure(f"llama.cpp failed on document {i}: {exc}") from exc
                logits = lib.llama_get_logits_ith(llm.ctx, -1)
                scores.append(yes_no_score(float(logits[yes]), float(logits[no])))
                tokens += len(ids)
                progress(PROGRESS_MARK, None)
        finally:
            llm.reset()  # the next generation's prompt must not match this one's cache
            self._set_running(False)
        return RerankResult(scores, tokens)

    @staticmethod
    def _answer_id(llm: Any, word: str) -> int:
        ids = llm.tokenize(word.encode("utf-8"), add_bos=False, special=False)
        if len(ids) != 1:
            raise RuntimeFailure(f"the answer {word!r} is {len(ids)} tokens for this model, not one")
        return int(ids[0])
