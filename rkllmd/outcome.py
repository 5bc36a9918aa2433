"""What a finished run's final reply says, and whether its output is what the request asked for.

Pure functions of the request's record (its ``run``) and the runtime's result, used by
the inference loop (rkllmd/loop.py) on the inference thread: the reply data (text, usage, timings,
tool calls), and the output checks against ``format`` and ``tool_choice``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import structlog

from rkllmd.errors import InvalidOutput
from rkllmd.exchange import Exchange
from rkllmd.protocol import generation_data, partial_data
from rkllmd.runtime.base import GenerateResult
from rkllmd.toolcalls import format_schema, validate

log = structlog.get_logger("rkllmd.loop")


def check_output(job: Exchange) -> None:
    """Hold the output to ``format`` and ``tool_choice``, and its calls to being well formed;
    llama.cpp's grammars already do (unless max_tokens or a stop string cuts a call), a runtime
    without grammars (RKLLM) is checked here. InvalidOutput says what did not match."""
    inp = job.inp
    assert inp is not None
    calls = job.run.tool_calls
    if job.run.bad_calls and not calls:
        # The model meant to act and its call cannot be run: saying so beats a silent text answer
        # (or one that claims the action happened). docs/TOOLS.md, "Malformed calls".
        why = job.run.bad_calls[0]
        raise InvalidOutput(
            f"the model wrote a tool call that is not well formed ({why}), so no tool was called"
        )
    if inp.call_required:
        wanted = inp.tool_name
        if not calls or (wanted is not None and any(c["function"]["name"] != wanted for c in calls)):
            what = f"a call to {wanted!r}" if wanted else "a tool call"
            log.warning("output lacks the required tool call", tool=wanted, calls=len(calls))
            raise InvalidOutput(f"tool_choice asked for {what}; the model's output has none")
    if inp.format is None or calls:
        return
    try:
        value = json.loads(job.run.text)
    except ValueError as exc:
        log.warning("output is not JSON", error=str(exc))
        raise InvalidOutput(f"the output is not valid JSON ({exc}), as format asked") from None
    problems = validate(value, format_schema(inp.format))
    if problems:
        log.warning("output does not match the schema", problems=problems[:5])
        raise InvalidOutput("the output does not match the format schema: " + "; ".join(problems[:5]))


def final_data(
    job: Exchange, finish_reason: str, result: GenerateResult | None = None, n_prompt: int | None = None
) -> dict[str, Any]:
    """A run's reply data: text, its thought (if any), finish reason, usage, timings from the run
    and the runtime's counters, and its tool calls."""
    now = time.monotonic()
    perf = result.perf if result is not None else None
    prompt_tokens = perf.prompt_tokens if perf and perf.prompt_tokens is not None else n_prompt
    completion = perf.completion_tokens if perf and perf.completion_tokens else job.run.seq
    timings: dict[str, Any] = {"queue_ms": _ms((job.run.started_at or now) - (job.run.enqueued_at or now))}
    if job.run.started_at is not None:
        timings["total_ms"] = _ms(now - job.run.started_at)
        if job.run.first_token_at is not None:
            timings["ttft_ms"] = _ms(job.run.first_token_at - job.run.started_at)
    if perf is not None:
        if perf.prefill_ms is not None:
            timings["prefill_ms"] = round(perf.prefill_ms, 2)
            if prompt_tokens and perf.prefill_ms > 0:
                timings["prefill_tokens_per_s"] = round(prompt_tokens * 1000 / perf.prefill_ms, 2)
        decode_ms = perf.decode_ms
        if decode_ms is None and job.run.first_token_at and job.run.last_token_at:
            decode_ms = (job.run.last_token_at - job.run.first_token_at) * 1000
        if decode_ms is not None:
            timings["decode_ms"] = round(decode_ms, 2)
            if completion and decode_ms > 0:
                timings["decode_tokens_per_s"] = round(completion * 1000 / decode_ms, 2)
        if perf.images:  # before the prompt: the images' decoding and the vision encoder
            timings["images"] = perf.images
            for key in ("image_decode_ms", "image_encode_ms"):
                value = getattr(perf, key)
                if value is not None:
                    timings[key] = round(value, 2)
        if perf.memory_mb is not None:
            timings["memory_mb"] = round(perf.memory_mb, 1)
    data = generation_data(job.model, job.run.text, finish_reason, prompt_tokens, completion, timings)
    if job.run.thoughts:  # a thinking model's thought, never in the text (docs/THINKING.md)
        data["thinking"] = job.run.thinking
    if job.inp is not None and job.inp.active_tools:
        data["tool_calls"] = list(job.run.tool_calls)
        if job.run.tool_calls and finish_reason in ("stop", "length"):
            data["finish_reason"] = "tool_calls"
    return data


def partial(job: Exchange, generates: bool) -> dict[str, Any]:
    """What an error reply carries of a job that failed: a generation's text so far, else the model."""
    return partial_data(job.model, job.run.text, job.run.seq) if generates else partial_data(job.model)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)
