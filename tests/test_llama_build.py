"""scripts/llama_build.py: the CPU probe, the level it picks, and the smoke test's fallback."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SIGILL_CMD = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]
OK_CMD = [sys.executable, "-c", "print('{\"tokens\": 4}')"]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def lb() -> ModuleType:
    """llama_build.py, with the probe module it imports (run as a script, its folder is sys.path[0])."""
    _load("cpu_probe")  # llama_build's `from cpu_probe import ...` finds it in sys.modules
    return _load("llama_build")


XEON_AMX = "flags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 avx512f avx512cd avx512vl avx512dq avx512bw " \
    "avx512vbmi avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16\n"  # fmt: skip


def test_amx_is_never_built_even_when_it_executes(lb: ModuleType) -> None:
    """A CPU that advertises (and runs) everything gets AVX2, AMX off and no -march=native."""
    _adv, executed, _ = lb.probe_cpu("x86_64", XEON_AMX, lambda p: True)
    level = lb.choose_level("x86_64", executed)
    args = set(level.cmake_args)
    assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF", "-DGGML_NATIVE=OFF"} <= args
    assert {"-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_AVX512=OFF"} <= args
    assert level.name == "avx2"


def test_avx512_only_when_asked_and_still_without_amx(lb: ModuleType) -> None:
    """Asked for, AVX-512 and its extensions that execute are built in; AMX stays off."""
    _adv, executed, _ = lb.probe_cpu("x86_64", XEON_AMX, lambda p: p.name != "avx512_bf16")
    level = lb.choose_level("x86_64", executed, avx512=True)
    args = set(level.cmake_args)
    assert {"-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_BF16=OFF"} <= args
    assert "-DGGML_AMX_TILE=OFF" in args
    assert level.name == "avx512-vbmi-vnni"


def test_advertised_but_trapping_set_is_left_out(lb: ModuleType) -> None:
    """AVX-512 that /proc/cpuinfo lists but that does not execute drops the build to AVX2."""
    advertised, executed, _ = lb.probe_cpu("x86_64", XEON_AMX, lambda p: not p.name.startswith("avx512"))
    assert "avx512" in advertised and "avx512" not in executed
    level = lb.choose_level("x86_64", executed, avx512=True)
    assert level.name == "avx2"
    assert "-DGGML_AVX512=OFF" in level.cmake_args and "-DGGML_AVX2=ON" in level.cmake_args


def test_unadvertised_sets_are_never_probed(lb: ModuleType) -> None:
    """Only what the CPU lists is tried: an old CPU with SSE4.2 alone runs one probe."""
    tried: list[str] = []
    _adv, executed, _ = lb.probe_cpu("x86_64", "flags : fpu sse4_2\n", lambda p: tried.append(p.name) or True)
    assert tried == ["sse42"]
    level = lb.choose_level("x86_64", executed)
    assert "-DGGML_AVX=OFF" in level.cmake_args and "-DGGML_SSE42=ON" in level.cmake_args


def test_board_cores_get_dotprod_and_fp16_but_never_sve(lb: ModuleType) -> None:
    """A Cortex-A76/A55 (RK3588) builds for Armv8.2-A with dotprod and fp16, with no SVE."""
    cpuinfo = "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm " \
        "lrcpc dcpop asimddp\n"  # fmt: skip
    _adv, executed, _ = lb.probe_cpu("aarch64", cpuinfo, lambda p: True)
    level = lb.choose_level("aarch64", executed)
    assert level.cmake_args == ("-DGGML_NATIVE=OFF", "-DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16")
    assert "sve" not in " ".join(level.cmake_args)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_probe_that_traps_counts_as_missing(lb: ModuleType, tmp_path: Path) -> None:
    probe = sys.modules["cpu_probe"]
    """A probe program that dies of SIGILL in its child process is reported as not executing."""
    trap = probe.Probe("trap", (), (), "#include <signal.h>\nint main(void) { raise(SIGILL); return 0; }\n")
    fine = probe.Probe("fine", (), (), "int main(void) { return 0; }\n")
    assert lb.run_probe(trap, "gcc", tmp_path) is False
    assert lb.run_probe(fine, "gcc", tmp_path) is True


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_real_probe_runs_only_what_this_cpu_lists(lb: ModuleType, tmp_path: Path) -> None:
    """On this machine the probes execute a subset of what /proc/cpuinfo advertises."""
    machine = lb.arch()
    cpuinfo = Path("/proc/cpuinfo").read_text()
    advertised, executed, results = lb.probe_cpu(machine, cpuinfo, lambda p: lb.run_probe(p, "gcc", tmp_path))
    assert executed <= advertised and set(results) == advertised
    if machine == "x86_64" and "avx2" in lb.advertised_flags(cpuinfo):
        assert "avx2" in executed  # every x86 CPU that lists AVX2 here runs it


def test_smoke_tells_a_signal_from_a_failure(lb: ModuleType) -> None:
    """A child killed by SIGILL is a crash; one that exits 1 is a failure with its message."""
    crash = lb.smoke(SIGILL_CMD)
    assert not crash.ok and crash.signal == "SIGILL"
    fail = lb.smoke([sys.executable, "-c", "import sys; sys.exit('no model')"])
    assert not fail.ok and fail.signal is None and "no model" in fail.detail


def test_crash_rebuilds_with_the_conservative_level(
    lb: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    """When the chosen build's smoke test dies of SIGILL, setup installs the conservative one and says so."""
    chosen = lb.choose_level("x86_64", {"sse42", "avx", "avx2"})
    fallback = lb.conservative_level("x86_64")
    installed: list[str] = []
    done = lb.ensure(
        chosen,
        fallback,
        lambda level: installed.append(level.name),
        lambda: lb.smoke(OK_CMD if installed[-1] == fallback.name else SIGILL_CMD),
    )
    assert done is fallback and installed == ["avx2", "x86-64"]
    err = capsys.readouterr().err
    assert "crashed in the smoke test (SIGILL)" in err and "most conservative" in err


def test_never_ready_when_the_conservative_build_crashes_too(lb: ModuleType) -> None:
    """If even the conservative build crashes, setup stops with an error instead of "ready"."""
    chosen = lb.choose_level("x86_64", {"sse42", "avx", "avx2"})
    with pytest.raises(SystemExit, match=r"conservative .* fails too"):
        lb.ensure(chosen, lb.conservative_level("x86_64"), lambda level: None, lambda: lb.smoke(SIGILL_CMD))


def test_cache_key_names_cpu_level_and_options(lb: ModuleType) -> None:
    """Wheels are cached per version, architecture, level and exact options, outside pip's cache."""
    a = lb.choose_level("x86_64", {"sse42", "avx", "avx2"}).key("0.3.36", "x86_64")
    b = lb.conservative_level("x86_64").key("0.3.36", "x86_64")
    c = lb.choose_level("x86_64", {"sse42", "avx", "avx2"}).key("0.3.37", "x86_64")
    assert len({a, b, c}) == 3 and "x86_64-avx2-" in a and "0.3.36" in a
    assert "pip" not in lb.cache_root().parts


def test_constraints_pin_the_llama_build(lb: ModuleType) -> None:
    """setup.sh and CI take llama-cpp-python's version from constraints.txt."""
    version = lb.pinned_version(ROOT / "constraints.txt")
    assert version.count(".") == 2
    text = (ROOT / "scripts" / "setup.sh").read_text()
    assert '-c "$CONSTRAINTS"' in text and "llama_build.py" in text


def test_build_lands_in_a_fresh_cache_with_the_levels_options(lb: ModuleType, tmp_path: Path) -> None:
    """On a machine with no cache yet, the wheel is built with the level's options into its own folder."""
    # A stand-in for the venv's python: records its arguments and CMAKE_ARGS, writes a wheel to -w.
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "$@" > {tmp_path}/argv; echo "$CMAKE_ARGS" > {tmp_path}/cmake\n'
        'while [ "$1" != "-w" ]; do shift; done; touch "$2/llama_cpp_python-0.3.36-py3-none-any.whl"\n'
    )
    fake.chmod(0o755)
    level = lb.choose_level("x86_64", {"sse42", "avx", "avx2"})
    out = tmp_path / "never-made" / "cache" / level.key("0.3.36", "x86_64")
    wheel = lb.build_wheel(fake, "0.3.36", level, out)
    assert wheel.parent == out and wheel.is_file()
    assert (tmp_path / "cmake").read_text().split() == list(level.cmake_args)
    argv = (tmp_path / "argv").read_text()
    assert "--no-cache-dir" in argv and "--no-binary llama-cpp-python" in argv
    assert "llama-cpp-python==0.3.36" in argv
    assert lb.build_wheel(fake, "0.3.36", level, out) == wheel  # the second time it is reused
