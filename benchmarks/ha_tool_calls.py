"""How often a model acts on Home Assistant's device commands: N phrasings of "turn the kitchen
light on/off" with HA's system prompt and intent tools, through rkllmd's llama.cpp runtime.

Each answer is sorted into one of:

- **acted**: a well-formed call of the right intent (HassTurnOn / HassTurnOff) for the kitchen
  light (``name`` mentions the kitchen, or ``area`` is the kitchen; a ``domain``, if any,
  includes ``light``), its arguments valid for the tool's schema;
- **wrong call**: well-formed calls, none of them that one (another intent, another device, a
  tool that was not offered, arguments the schema refuses);
- **malformed**: a ``<tool_call>`` that is not a call (bad JSON, never closed) and no good one;
- **text**: an answer in words.

``markup spoken`` counts the answers whose text (what rkllmd streams, and HA speaks) still holds
Hermes markup (``<tool_call>``, ``<tools>``) once rkllmd's parser has taken the calls out. The
figures depend on the rkllmd on ``PYTHONPATH``, so the same script measures a change before and
after:

    PYTHONPATH=. python benchmarks/ha_tool_calls.py                      # this tree
    PYTHONPATH=/path/to/older/tree python benchmarks/ha_tool_calls.py    # another one

The HA request is the captured one (``--request``: an Ollama ``/api/chat`` body as HA sent it,
its system message and tools are used) when given or present at tests/fixtures/, else the
HA-shaped prompt of the ``ha_turn`` benchmark case (rkllmd/bench/haturn.py). Greedy decoding
and ``--seeds`` sampled runs at the model's default temperature.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "ha_2025_4_4_chat_request.json"
CATEGORIES = ("acted", "wrong call", "malformed", "text")
MARKUP = ("<tool_call", "</tool_call", "<tools>", "</tools>")  # the Hermes tags a model may echo

PHRASINGS: list[tuple[str, str]] = [
    ("turn on the kitchen light", "HassTurnOn"),
    ("switch the kitchen light on", "HassTurnOn"),
    ("kitchen light on please", "HassTurnOn"),
    ("please turn the kitchen light on", "HassTurnOn"),
    ("can you turn on the light in the kitchen?", "HassTurnOn"),
    ("lights on in the kitchen", "HassTurnOn"),
    ("turn off the kitchen light", "HassTurnOff"),
    ("switch the kitchen light off", "HassTurnOff"),
    ("kitchen light off please", "HassTurnOff"),
    ("please turn the kitchen light off", "HassTurnOff"),
    ("can you switch off the light in the kitchen?", "HassTurnOff"),
    ("lights off in the kitchen", "HassTurnOff"),
]


def ha_request(path: Path | None) -> tuple[str, str, list[dict[str, Any]]]:
    """(where it comes from, HA's system prompt, HA's tools)."""
    if path is None and FIXTURE.is_file():
        path = FIXTURE
    if path is not None:
        body = json.loads(path.read_text())
        system = next(m["content"] for m in body["messages"] if m["role"] == "system")
        return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path), system, body["tools"]
    from rkllmd.bench import haturn

    return (
        "the ha_turn case's HA-shaped prompt (rkllmd/bench/haturn.py)",
        haturn.system_prompt(),
        haturn.tools(),
    )


def right_entity(args: dict[str, Any]) -> bool:
    name, area = str(args.get("name", "")).lower(), str(args.get("area", "")).lower()
    domain = args.get("domain")
    domains = (
        [str(d).lower() for d in domain] if isinstance(domain, list) else [str(domain or "light").lower()]
    )
    return ("kitchen" in name or area == "kitchen") and "light" in domains


def classify(raw: str, intent: str, schemas: dict[str, Any]) -> tuple[str, bool]:
    """(category, whether call markup is left in the text the user gets)."""
    from rkllmd.toolcalls import validate
    from rkllmd.toolcalls.formats.hermes import HermesParser

    parser = HermesParser()
    text = parser.feed(raw) + parser.finish()
    spoken = any(tag in text for tag in MARKUP)
    good = [c for c in parser.calls if c.name in schemas and not validate(c.arguments, schemas[c.name])]
    if any(c.name == intent and right_entity(c.arguments) for c in good):
        return "acted", spoken
    if parser.calls:
        return "wrong call", spoken
    if parser.malformed or "tool_call" in raw:
        return "malformed", spoken
    return "text", spoken


def rkllmd_version() -> str:
    import rkllmd

    src = Path(rkllmd.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        rev = "?"
    return f"{src} @ {rev}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--request", type=Path, help="an Ollama /api/chat body HA sent (JSON)")
    ap.add_argument("--model", type=Path, help=".gguf file; default the embedded SmolLM2")
    ap.add_argument("--seeds", type=int, default=2, help="sampled runs per phrasing (besides greedy)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=8192)
    ap.add_argument("--verbose", "-v", action="store_true", help="print every answer")
    args = ap.parse_args()

    import structlog

    from rkllmd.generation import ChatMessage, GenerateInput, Sampling
    from rkllmd.runtime.llamacpp.runtime import LlamaCppRuntime
    from rkllmd.runtime.llamacpp.settings import LlamaCppModelSettings

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only
    source, system, tools = ha_request(args.request)
    schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
    cfg = LlamaCppModelSettings.model_validate(
        {"runtime": "llamacpp", "path": args.model, "max_context_len": args.n_ctx, "n_threads": args.threads}
    )
    rt = LlamaCppRuntime("bench", cfg)
    rt.open()
    n_prompt = rt.prompt_tokens(
        GenerateInput((ChatMessage("system", system), ChatMessage("user", "hi")), 1, tools=tuple(tools))
    )
    print(f"rkllmd: {rkllmd_version()}")
    model = rt.model_path.name if rt.model_path else "?"
    print(f"request: {source}; {len(tools)} tools; prompt {n_prompt} tokens; model {model}")
    modes = [("greedy", Sampling(temperature=0.0))]
    modes += [(f"seed {s}", Sampling(temperature=cfg.temperature, seed=s)) for s in range(1, args.seeds + 1)]
    totals: Counter[str] = Counter()
    spoken_total = 0
    seconds: list[float] = []
    for label, sampling in modes:
        counts: Counter[str] = Counter()
        spoken = 0
        for phrase, intent in PHRASINGS:
            inp = GenerateInput(
                (ChatMessage("system", system), ChatMessage("user", phrase)),
                args.max_tokens,
                sampling,
                tuple(tools),
            )
            deltas: list[str] = []
            t0 = time.perf_counter()
            rt.generate(inp, lambda text, _tok, out=deltas: out.append(text))
            seconds.append(time.perf_counter() - t0)
            raw = "".join(deltas)
            kind, markup = classify(raw, intent, schemas)
            counts[kind] += 1
            spoken += markup
            if args.verbose:
                print(
                    f"  [{label}] {phrase!r} -> {kind}{' (markup spoken)' if markup else ''}: {raw[:160]!r}"
                )
        totals += counts
        spoken_total += spoken
        row = ", ".join(f"{k} {counts[k]}" for k in CATEGORIES)
        print(f"{label:>8}: of {len(PHRASINGS)}: {row}; markup spoken {spoken}")
    n = len(PHRASINGS) * len(modes)
    row = ", ".join(f"{k} {totals[k]}" for k in CATEGORIES)
    print(f"{'all':>8}: of {n}: {row}; markup spoken {spoken_total}")
    seconds.sort()
    print(f"seconds per turn (prompt cached after the first): median {seconds[len(seconds) // 2]:.2f}")
    rt.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
