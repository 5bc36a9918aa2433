"""One generate()'s run on librkllmrt.so: the state its result callback writes, and the callback.

Threads: ``rkllm_run`` blocks the inference thread (or the worker's) and the runtime calls the
result callback on that same thread, so ``TextRun`` is written there and read after the run
returns; ``TextCallback._on_result`` only copies data and hands text to the sink.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import Any

from rkllmd.runtime.base import TokenSink
from rkllmd.runtime.rkllm import _abi_common as c
from rkllmd.runtime.rkllm._handle import RkllmHandle
from rkllmd.runtime.rkllm._lib import RkllmLibrary


@dataclass
class TextRun:
    """State of one generate(), written by the callback (run thread), read after rkllm_run returns."""

    sink: TokenSink
    limit: int
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )
    tokens: int = 0  # tokens accepted (NORMAL + WAITING callbacks up to the limit)
    stopped: bool = False  # no more text goes to the sink (limit, abort or sink failure)
    hit_limit: bool = False
    finished: bool = False
    error: bool = False
    sink_error: BaseException | None = None
    perf: tuple[float, int, float, int, float] | None = None


class TextCallback:
    """The result callback of a text generation (a part of
    rkllmd.runtime.rkllm.runtime.RkllmRuntime, which owns the attributes declared here); the
    callback runs on the thread blocked in rkllm_run."""

    handle: RkllmHandle | None
    lib: RkllmLibrary | None
    _run: TextRun | None
    _abort_requested: bool

    def _on_result(self, state: int, result: Any) -> None:
        """The result callback's body; runs on the thread blocked in rkllm_run. Only copies data."""
        run = self._run
        if run is None:
            return
        if state in (c.RKLLM_RUN_NORMAL, c.RKLLM_RUN_WAITING):
            if run.stopped:
                return  # past the limit or aborted: the runtime may emit a few more before it stops
            run.tokens += 1
            raw = result.text if result is not None else None
            text = run.decoder.decode(raw or b"")
            if text:
                self._to_sink(run, text, int(result.token_id) if result is not None else None)
            if run.tokens >= run.limit and not run.stopped:
                run.stopped = run.hit_limit = True
                if self.lib is not None and not self.lib.spec.per_run_limits:
                    self._native_abort()  # before 1.3 max_new_tokens is fixed at init
            if self._abort_requested and not run.stopped:
                run.stopped = True
                self._native_abort()  # abort() may have raced with the start of rkllm_run
        elif state == c.RKLLM_RUN_FINISH:
            run.finished = True
            tail = run.decoder.decode(b"", final=True)
            if tail and not run.stopped:
                self._to_sink(run, tail, None)
            if result is not None and self.lib is not None and self.lib.spec.has_perf:
                pf = result.perf
                run.perf = (
                    float(pf.prefill_time_ms),
                    int(pf.prefill_tokens),
                    float(pf.generate_time_ms),
                    int(pf.generate_tokens),
                    float(pf.memory_usage_mb),
                )
        elif state == c.RKLLM_RUN_ERROR:
            run.error = True

    def _to_sink(self, run: TextRun, text: str, token_id: int | None) -> None:
        try:
            run.sink(text, token_id)
        except BaseException as exc:
            run.sink_error = exc
            run.stopped = True
            self._native_abort()

    def _native_abort(self) -> None:
        handle = self.handle
        if handle is not None:
            handle.abort()
