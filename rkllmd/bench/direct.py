"""The direct path: rkllmd's own Runtime classes called in this process, no MQTT, no daemon."""

from __future__ import annotations

import os
import time
from typing import Any

from rkllmd.bench.haturn import first_sentence_ms
from rkllmd.bench.stats import Sample, rate, stream_rate
from rkllmd.protocol import GenerateRequest
from rkllmd.runtime.base import Runtime
from rkllmd.settings import Settings


class DirectPath:
    """Opens one model at a time in-process and times generate() as the inference loop calls it."""

    name = "direct"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._rt: Runtime | None = None
        self.pid = os.getpid()

    def load(self, model: str) -> dict[str, Any]:
        """Open ``model`` (closing any other); returns the runtime's describe()."""
        from rkllmd.runtime.registry import make_runtime

        self.unload()
        # isolate=False: the real runtime class in this process, not the daemon's worker process.
        rt = make_runtime(model, self.settings.models[model], self.settings, isolate=False)
        rt.open()
        self._rt = rt
        return rt.describe()

    def abort(self) -> None:
        """Stop the running generation soon (any thread but the one inside generate())."""
        if self._rt is not None:
            self._rt.abort()

    def unload(self) -> None:
        rt, self._rt = self._rt, None
        if rt is not None:
            rt.close()

    def run(self, request: dict[str, Any], clear: bool = True) -> Sample:
        """One generation of ``request`` (a generate payload), from an empty KV cache if ``clear``."""
        rt = self._rt
        assert rt is not None, "load() a model first"
        inp = GenerateRequest.model_validate(request).to_input(int(request["max_tokens"]))
        # Every run evaluates the whole prompt, as the MQTT path does after its clear_cache.
        if clear:
            rt.clear_cache()
        times: list[float] = []
        pieces: list[str] = []

        def sink(delta: str, _token: int | None) -> None:
            if delta:
                times.append(time.perf_counter())
                pieces.append(delta)

        t0 = time.perf_counter()
        result = rt.generate(inp, sink)
        t_end = time.perf_counter()
        perf = result.perf
        return Sample(
            ttft_ms=((times[0] if times else t_end) - t0) * 1e3,
            total_ms=(t_end - t0) * 1e3,
            completion_tokens=perf.completion_tokens or len(times),
            prompt_tokens=perf.prompt_tokens,
            prefill_ms=perf.prefill_ms,
            decode_ms=perf.decode_ms,
            prefill_tps=rate(perf.prompt_tokens, perf.prefill_ms),
            decode_tps=rate(perf.completion_tokens, perf.decode_ms),
            stream_tps=stream_rate(times),
            deltas=len(times),
            runtime_memory_mb=perf.memory_mb,
            ttfs_ms=first_sentence_ms(pieces, times, t0, t_end),
            finish_reason=result.finish_reason,
            image_decode_ms=perf.image_decode_ms,
            image_encode_ms=perf.image_encode_ms,
            text="".join(pieces),
        )
