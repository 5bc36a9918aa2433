"""What keeping thought apart costs per token: the splitter rkllmd puts in front of every run's
sink (rkllmd/thinking.py), on the inference thread, and the stream chunk with a thought in it.

Feeds a Qwen3-like output (a 600-token thought, a 200-token answer) and a model that does not
think, in 4-character deltas (a typical token), and prints microseconds per delta for each part;
asserts nothing.

    .venv/bin/python benchmarks/thinking_splitter.py [--rounds 200]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

from rkllmd.generation import Thinking
from rkllmd.protocol import stream_chunk
from rkllmd.thinking import ThoughtSplitter

THOUGHT = "Okay, the user wants the kitchen light on; HassTurnOn with the name will do it. " * 30
ANSWER = "Sure, the kitchen light is on now. Is there anything else I can do for you? " * 10


def deltas(text: str, size: int = 4) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


def per_delta_us(pieces: list[str], spec: Thinking, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        s = ThoughtSplitter(spec)
        t0 = time.perf_counter()
        for p in pieces:
            s.feed(p)
        s.finish()
        best = min(best, time.perf_counter() - t0)
    return best / len(pieces) * 1e6


def timed_us(fn: Callable[[], object], n: int = 20000) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    qwen3 = deltas(f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}")
    thought_only = deltas(f"<think>\n{THOUGHT}")
    plain = deltas(ANSWER * 4)
    print(f"python {platform.python_version()} on {platform.machine()}, best of {args.rounds} rounds")
    rows = [
        ("no thought (a model that does not think)", per_delta_us(plain, Thinking(), args.rounds), "/delta"),
        ("inside a thought", per_delta_us(thought_only, Thinking(), args.rounds), "/delta"),
        ("Qwen3 output (thought, then answer)", per_delta_us(qwen3, Thinking(), args.rounds), "/delta"),
        ("stream chunk, text only", timed_us(lambda: stream_chunk("r1", 7, "word")), ""),
        ("stream chunk with thought", timed_us(lambda: stream_chunk("r1", 7, "", 1, "word")), ""),
    ]
    for name, us, unit in rows:
        print(f"  {name:<42} {us:7.3f} us{unit}")


if __name__ == "__main__":
    main()
