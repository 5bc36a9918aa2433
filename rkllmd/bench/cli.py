"""Arguments and entry point of ``rkllmd bench``; imports nothing heavy until it runs."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the parser is built for every rkllmd command: keep it light
    from rkllmd.settings import Settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", action="append", default=[], help="a configured model (repeatable)")
    p.add_argument("--all-models", action="store_true", help="every configured model")
    p.add_argument("--runs", type=int, default=3, help="measured runs per case and path (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (default 1)")
    p.add_argument("--case", action="append", default=[], help="only this case id (repeatable)")
    p.add_argument("--suite", type=Path, help="folder of prompt .toml files (default benchmarks/prompts)")
    p.add_argument("--max-tokens", type=int, help="override every case's max_tokens")
    p.add_argument("--temperature", type=float, default=0.0, help="default 0: comparable answers")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--path", choices=["both", "direct", "mqtt"], default="both", help="what to measure")
    p.add_argument("--host", help="use this broker (default: start a loopback mosquitto)")
    p.add_argument("--port", type=int, help="broker port with --host (default: from config)")
    p.add_argument("--out", type=Path, help="report folder (default benchmarks/results)")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A.json", "B.json"), help="compare two reports")
    p.add_argument("--threshold", type=float, default=10.0, help="regression threshold in %% (default 10)")
    p.add_argument("--relay", action="store_true", help="run benchmarks/relay.py (the daemon's own cost)")
    p.add_argument("--requests", type=int, help="with --relay: requests of the RSS-growth phase")


def main(args: argparse.Namespace, settings: Settings) -> int:
    if args.compare:
        from rkllmd.bench.compare import compare_files

        try:
            return compare_files(args.compare[0], args.compare[1], args.threshold, sys.stdout)
        except (OSError, ValueError, KeyError) as exc:
            print(f"rkllmd bench: cannot compare: {exc}", file=sys.stderr)
            return 2
    if args.relay:
        return _relay(args)
    return _bench(args, settings)


def _repo() -> Path:
    return Path(__file__).resolve().parents[2]


def _relay(args: argparse.Namespace) -> int:
    # The relay benchmark needs the C double from tests/, so it lives in a checkout, not the package.
    script = _repo() / "benchmarks" / "relay.py"
    if not script.is_file():
        print("rkllmd bench --relay needs a checkout of rkllmd (benchmarks/relay.py)", file=sys.stderr)
        return 2
    cmd = [sys.executable, str(script)]
    if args.requests is not None:
        cmd += ["--requests", str(args.requests)]
    if args.host:
        cmd += ["--host", args.host, "--port", str(args.port or 1883)]
    return subprocess.call(cmd, cwd=_repo())


def _bench(args: argparse.Namespace, settings: Settings) -> int:
    from rkllmd import logs
    from rkllmd.bench.report import write_report
    from rkllmd.bench.runner import BenchOptions, run_bench
    from rkllmd.bench.suite import default_suite_dir, load_suite

    # The direct path runs runtimes in this process: keep their info lines off the progress bar.
    logs.configure("warning", "console")
    models = list(settings.models) if args.all_models else (args.model or [settings.default])
    unknown = [m for m in models if m not in settings.models]
    if unknown:
        have = list(settings.models)
        print(f"rkllmd bench: unknown model(s) {unknown}; configured: {have}", file=sys.stderr)
        return 2
    if args.runs < 1 or args.warmup < 0:
        print("rkllmd bench: --runs must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    try:
        cases = load_suite(args.suite or default_suite_dir(), args.case or None)
    except (OSError, ValueError) as exc:
        print(f"rkllmd bench: {exc}", file=sys.stderr)
        return 2
    opts = BenchOptions(
        models=models,
        cases=cases,
        runs=args.runs,
        warmup=args.warmup,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        seed=args.seed,
        paths=("direct", "mqtt") if args.path == "both" else (args.path,),
        host=args.host,
        port=args.port,
    )
    report = run_bench(settings, opts)
    md, js = write_report(report, args.out or _repo() / "benchmarks" / "results", not args.no_charts)
    print(f"report: {md}\n        {js}")
    for err in report["errors"]:
        print(f"rkllmd bench: {err}", file=sys.stderr)
    if report["interrupted"]:
        print("rkllmd bench: interrupted; the report holds what was measured so far", file=sys.stderr)
        return 130
    return 1 if report["errors"] else 0
