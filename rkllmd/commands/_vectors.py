"""What the embed and rerank commands share (docs/EMBEDDINGS.md): a model of the right kind, the
bounds on a job's size, and the run under the loop's rules.

A job's size is bounded twice, so that a long batch cannot hold the one queue for long while a
voice request waits behind it: at admission (ingress thread) by how many texts it holds
(``limits.max_embed_inputs``), before the run (inference thread, with the model's tokenizer) by
each text's tokens against the context (or, an embed with ``truncate``, each cut to fit it) and
all of them against ``limits.max_embed_tokens``. The
run itself is watched like a generation: each text done is progress (the first-token, stall and
total deadlines of the watchdog), cancel and the watchdog abort it between texts, and a runtime
crash follows the loop's crash rules.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

import structlog

from rkllmd.commands._base import Engine
from rkllmd.embedding import EmbedResult, Progress, RerankResult, VectorInput, cut_to_fit, embed_text
from rkllmd.errors import (
    ContextExceeded,
    EmptyInput,
    RkllmdError,
    ShuttingDown,
    TooManyInputs,
    WrongModelKind,
)
from rkllmd.exchange import Exchange, Final, require_model
from rkllmd.jobs import timeout_error
from rkllmd.protocol import use_for
from rkllmd.runtime.base import GenerateResult, Perf, Runtime
from rkllmd.settings import Settings

R = TypeVar("R", EmbedResult, RerankResult)
log = structlog.get_logger("rkllmd.commands")


def model_for(settings: Settings, asked: str | None, kind: str) -> str:
    """The model a request of ``kind`` runs on: the one it names, which must serve ``kind``; none
    named: the default model if it does, else the first configured model that does."""
    serving = [name for name, cfg in settings.models.items() if cfg.kind == kind]
    if asked is None:
        if not serving:
            raise WrongModelKind(
                f'no {kind} model is configured: give one kind = "{kind}" in [models.<name>]'
            )
        return settings.default if settings.default in serving else serving[0]
    require_model(settings, asked)
    has = settings.models[asked].kind
    if has != kind:
        others = f"{kind} models: {', '.join(serving)}" if serving else f"no {kind} model is configured"
        raise WrongModelKind(f"model {asked!r} serves {has} requests, not {kind}: {use_for(has)} ({others})")
    return asked


def bounded(texts: Sequence[str], settings: Settings, what: str) -> None:
    """Refuse an empty list, an empty text, or more texts than one request may hold (ingress)."""
    if not texts:
        raise EmptyInput(f"{what} is empty: nothing to {'embed' if what == 'input' else 'score'}")
    for i, text in enumerate(texts):
        if not text.strip():
            raise EmptyInput(f"{what}[{i}] is empty")
    limit = settings.limits.max_embed_inputs
    if len(texts) > limit:
        raise TooManyInputs(
            f"{what} holds {len(texts)} texts; one request may hold {limit} (limits.max_embed_inputs)",
            limit=limit,
        )


def sized(rt: Runtime, texts: Sequence[str], model: str | None, noun: str, max_tokens: int) -> int | None:
    """Each text's tokens within the context, all of them within ``max_tokens``; their sum, or
    None when the runtime cannot count (inference thread, before the run)."""
    ctx, total = rt.context_length, 0
    for i, text in enumerate(texts):
        n = rt.count_tokens(text)
        if n is None:
            return None
        if ctx is not None and n >= ctx:
            raise ContextExceeded(
                f"{noun} {i} is {n} tokens but model {model!r} has a context of {ctx}",
                prompt_tokens=n,
                context_length=ctx,
                index=i,
            )
        total += n
    if total > max_tokens:
        raise TooManyInputs(
            f"the request is {total} tokens in all; one job may hold {max_tokens} "
            "(limits.max_embed_tokens): send the texts in several requests",
            limit=max_tokens,
        )
    return total


def fitted(rt: Runtime, v: VectorInput, model: str | None) -> VectorInput:
    """``v`` with each text longer than the context cut at its end to fit (inference thread, before
    the run); as it is when the runtime cannot count tokens (``sized`` lets the runtime refuse)."""
    ctx, texts = rt.context_length, list(v.texts)
    if ctx is None:
        return v
    for i, raw in enumerate(v.inputs):
        n = rt.count_tokens(texts[i])
        if n is None:
            return v
        if n < ctx:
            continue
        cut = cut_to_fit(raw, v.template, rt.count_tokens, ctx - 1)
        if cut is None:
            return v
        texts[i] = embed_text(v.template, cut)
        log.info("input truncated to fit the context", model=model, index=i, tokens=n,
                 context_length=ctx, chars_kept=len(cut), chars=len(raw))  # fmt: skip
    return replace(v, texts=tuple(texts))


def run_job(
    job: Exchange, loop: Engine, noun: str, call: Callable[[Runtime, Progress], R]
) -> tuple[R, int | None, dict[str, Any]] | Final:
    """Load the model, check the sizes, run ``call`` watched; the result with its token count and
    timings, or the final reply of a run that was cancelled or cut short (inference thread)."""
    assert job.vectors is not None
    rt = loop.load(job.model or loop.default_model)
    job.model = loop.loaded_model
    if job.vectors.truncate:
        job.vectors = fitted(rt, job.vectors, job.model)
    counted = sized(rt, job.vectors.texts, job.model, noun, job.vectors.max_tokens)
    if job.run.abort_reason is not None:  # cancelled between dequeue and start
        return Final(job, "ok", {"model": job.model, "finish_reason": "cancelled"})
    loop.begin(job)

    def progress(marks: str, _token: int | None) -> None:
        # each mark a text done: the watchdog's deadlines move on; a cancel that raced the start
        now = time.monotonic()
        if job.run.first_token_at is None:
            job.run.first_token_at = now
        job.run.last_token_at = now
        if job.run.abort_reason is not None:
            rt.abort()

    box: list[R] = []

    def go() -> GenerateResult:
        res = call(rt, progress)
        box.append(res)
        return GenerateResult("aborted" if res.aborted else "stop", Perf(prompt_tokens=res.prompt_tokens))

    ended = loop.survive(job, go)
    if ended.finish_reason == "aborted" or not box:
        why = job.run.abort_reason or "cancelled"
        if why == "cancelled":
            return Final(job, "ok", {"model": job.model, "finish_reason": "cancelled"})
        loop.counters["errors"] += 1
        return Final.failed(job, _cut_short(loop, why, noun), {"model": job.model})
    res = box[0]
    return res, res.prompt_tokens if res.prompt_tokens is not None else counted, timings(job)


def timings(job: Exchange) -> dict[str, Any]:
    now, run = time.monotonic(), job.run
    started = run.started_at or now
    return {"queue_ms": round((started - (run.enqueued_at or started)) * 1000, 2),
            "total_ms": round((now - started) * 1000, 2)}  # fmt: skip


def _cut_short(loop: Engine, why: str, noun: str) -> RkllmdError:
    if why == "shutdown":
        return ShuttingDown("interrupted by shutdown")
    words = (f"no {noun} done within", f"no {noun} done for", "the request exceeded")
    return timeout_error(loop.limits, why, words=words)
