"""Which instruction sets this CPU really executes, and the llama.cpp build level that follows.

Used by scripts/llama_build.py (standard library only, run with the system Python). A CPU's
advertised flags are not trusted: each set /proc/cpuinfo lists is proven by compiling and running
a tiny program that uses it, in a child process, because a VM can advertise a set it then traps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

PACKAGE = "llama-cpp-python"


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
