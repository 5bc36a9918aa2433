"""What the inference loop does with a generate job once its model is loaded and its run started.

``run_generation`` puts the thought splitter, the tool-call parser and the direct stream in
front of the runtime's token sink and runs the generation; ``final_of`` turns how it ended into
the request's final reply. Both run on the inference thread; the sink runs on whichever thread
the runtime delivers tokens on (rkllmd/loop.py keeps the queue, cancel, the watchdog and the
crash budget).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from rkllmd.errors import GenerationTimeout, RkllmdError, ShuttingDown
from rkllmd.exchange import Exchange, Final, Token
from rkllmd.outcome import final_data
from rkllmd.runtime.base import GenerateResult, Runtime
from rkllmd.thinking import ThoughtSplitter, opened_by_prompt

log = structlog.get_logger("rkllmd.loop")


class DirectStream(Protocol):
    """Publishes a run's stream chunks from the inference thread (rkllmd.dispatch.Dispatcher)."""

    def streams_directly(self, job: Exchange) -> bool: ...

    def publish_chunk(self, job: Exchange, seq: int, delta: str, thinking: str = "") -> None: ...


class Timeouts(Protocol):
    """The watchdog's limits a timeout error names (rkllmd.loop.Limits)."""

    @property
    def first_token_timeout_s(self) -> float: ...

    @property
    def total_timeout_s(self) -> float: ...

    @property
    def stall_timeout_s(self) -> float: ...


def run_generation(
    job: Exchange, rt: Runtime, emit: Callable[[Token], None], direct: DirectStream | None
) -> GenerateResult:
    """Run ``job`` on ``rt`` to its end (inference thread); raises what ``rt.generate_checked``
    raises (ContextExceeded for a prompt the model's context cannot hold), after the text the
    tool-call parser held back is out and the calls are on ``job.run``."""
    assert job.inp is not None
    # With tools, the model's call markup is taken out of the text here, for every runtime:
    # streamed deltas never carry it (nor a malformed call's), the calls go into the final reply.
    parser = rt.tool_format.parser(job.inp.active_tools) if job.inp.active_tools else None
    # Where the sink runs on this thread (a worker process's pipe) and nothing but the stream
    # wants the tokens, chunks go out from here: one thread wake-up fewer per token.
    if direct is not None and not (rt.sink_on_caller and direct.streams_directly(job)):
        direct = None
    job.run.direct_stream = direct is not None

    # A thinking model's thought is taken apart first: the tool-call parser sees the answer only.
    thought = ThoughtSplitter(opened_by_prompt(job.inp.thinking, rt.describe()))
    cap = job.inp.thinking.max_tokens

    def text_out(text: str, thinking: str = "") -> None:
        if text or thinking:
            if text:
                job.run.pieces.append(text)
            if thinking:
                job.run.thoughts.append(thinking)
            if direct is not None:
                direct.publish_chunk(job, job.run.seq, text, thinking)
            else:
                emit(Token(job, job.run.seq, text, thinking))
            job.run.seq += 1

    def answer(text: str) -> str:
        return parser.feed(text) if parser is not None and text else text

    # Runs on whatever thread the runtime delivers tokens on: copy, count, enqueue.
    def sink(delta: str, token_id: int | None) -> None:
        if not delta:
            return
        now = time.monotonic()  # timing follows the model, even while markup is held back
        if job.run.first_token_at is None:
            job.run.first_token_at = now
        job.run.last_token_at = now
        thinking, text = thought.feed(delta)
        text_out(answer(text), thinking)
        if cap is not None and thought.in_thought and thought.thought_deltas >= cap:
            stop_thinking(job)
        if job.run.abort_reason is not None:
            # A cancel that raced the start of the run may have found nothing to abort.
            rt.abort()

    try:
        # The prompt's length is checked first, in the same call: in a worker process, there.
        return rt.generate_checked(job.inp, sink, job.model)
    finally:  # held-back text is never lost, whatever ended the run
        thinking, text = thought.finish()
        text_out(answer(text), thinking)
        if thought.unclosed and job.run.abort_reason is None:  # not stopped: the model left it open
            log.warning("the model's thought never closed", request_id=job.id, deltas=thought.thought_deltas)
        if parser is not None:
            text_out(parser.finish())
            job.run.tool_calls, job.run.bad_calls = [c.as_dict() for c in parser.calls], parser.problems


def stop_thinking(job: Exchange) -> None:
    """The thought reached its cap (``max_thinking_tokens``): the run stops there, answered with
    finish_reason ``thinking_limit`` (the sink's thread; the sink then aborts the runtime)."""
    if job.run.abort_reason is None:
        log.warning("thought cap reached; generation stopped", request_id=job.id)
        job.run.abort_reason = "thinking_limit"
        job.run.aborted_at = time.monotonic()


def final_of(job: Exchange, result: GenerateResult, lim: Timeouts, stats: dict[str, Any]) -> Final:
    """The final reply of a run that ended with ``result``; counts it in the loop's ``stats``."""
    reason = result.finish_reason
    if reason == "aborted":
        why = job.run.abort_reason or "cancelled"
        if why in ("cancelled", "thinking_limit"):  # ended as asked: the text so far is the answer
            return Final(job, "ok", final_data(job, why, result))
        data = final_data(job, why, result)
        err: RkllmdError = (
            ShuttingDown("generation interrupted by shutdown")
            if why == "shutdown"
            else timeout_error(lim, why)
        )
        stats["errors"] += 1
        return Final.failed(job, err, data)
    data = final_data(job, reason, result)
    timings = data["timings"]
    stats["completion_tokens"] += data["usage"]["completion_tokens"]
    stats["last_ttft_ms"] = timings.get("ttft_ms")
    stats["last_decode_tokens_per_s"] = timings.get("decode_tokens_per_s")
    stats["last_model"] = job.model
    stats["last_answer_at"] = round(time.time(), 3)  # wall clock: the fleet view compares boards
    return Final(job, "ok", data)


#: How a generation's limits are said: no first result within, no next one for, the whole run
#: exceeded; each followed by the limit in seconds. A job of other results passes its own words.
TOKEN_WORDS = ("no first token within", "no new token for", "generation exceeded")


def timeout_error(
    lim: Timeouts, why: str, extra: str = "", words: tuple[str, str, str] = TOKEN_WORDS
) -> GenerationTimeout:
    """The error of a run the watchdog ended, naming its limit (``extra``: what else happened)."""
    first, stall, total = words
    if why == "first_token_timeout":
        return GenerationTimeout(f"{first} {lim.first_token_timeout_s:g} s{extra}", limit="first_token")
    if why == "stalled":
        return GenerationTimeout(f"{stall} {lim.stall_timeout_s:g} s{extra}", limit="stall")
    return GenerationTimeout(f"{total} {lim.total_timeout_s:g} s{extra}", limit="total")
