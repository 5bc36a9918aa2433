"""Builds that cannot run here are named from the ELF header, before dlopen."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from rkllmd.errors import LibraryVersionError
from rkllmd.runtime._libident import git_blob_id
from rkllmd.runtime.rkllm import _elf, _lib
from rkllmd.runtime.rkllm._elf import read_elf
from rkllmd.runtime.rkllm._lib import RkllmLibrary, detect_version
from tests.fake_rkllm.build import build_fake
from tests.fake_rkllm.derive import make_elf, patched_header, sdk_line
from tests.rkllm_conftest_fixtures import BUILD_DIR, fake_library

EM_ARM, EM_X86_64, EM_AARCH64, EM_386 = 40, 62, 183, 3


@pytest.fixture
def on_x86_64(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_elf, "host_machine", lambda: "x86_64")


def _lib_file(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "librkllmrt.so"
    p.write_bytes(data)
    return p


def test_host_build_is_accepted() -> None:
    """The double, built by gcc for this machine, passes the ELF check and loads."""
    info = read_elf(fake_library("13"))
    assert info is not None and (info.bits, info.little_endian, info.e_type, info.android) == (
        64,
        True,
        3,
        False,
    )
    assert info.needed and "libc.so.6" in info.needed
    assert RkllmLibrary.open(fake_library("13")).version == "1.3.0"


def test_aarch64_build_on_x86_64_is_named(tmp_path: Path, on_x86_64: None) -> None:
    """An aarch64 library on an x86_64 host is refused naming both architectures, even when pinned."""
    lib = patched_header(fake_library("13"), tmp_path / "librkllmrt.so", machine=EM_AARCH64)
    for pin in ("auto", "1.3.0"):
        with pytest.raises(LibraryVersionError, match="is built for aarch64, this machine is x86_64"):
            RkllmLibrary.open(lib, pin=pin)


def test_x86_64_build_on_aarch64_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """An x86_64 library on an aarch64 host is refused naming both architectures."""
    info = read_elf(fake_library("12"))
    if info is None or info.machine != EM_X86_64:
        pytest.skip("the double is not an x86_64 build on this machine")
    monkeypatch.setattr(_elf, "host_machine", lambda: "aarch64")
    with pytest.raises(LibraryVersionError, match="is built for x86_64, this machine is aarch64"):
        detect_version(fake_library("12"))


def test_unlisted_host_is_not_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host architecture the check does not know is not used to refuse anything."""
    monkeypatch.setattr(_elf, "host_machine", lambda: "sparc64")
    assert detect_version(fake_library("12")).version == "1.2.3"


@pytest.mark.parametrize(
    ("machine", "words"),
    [(EM_ARM, r"32-bit ARM \(armhf\)"), (EM_386, "32-bit x86"), (EM_AARCH64, "32-bit aarch64")],
)
def test_32bit_build_is_named(tmp_path: Path, machine: int, words: str) -> None:
    """A 32-bit library is refused as such, naming its architecture, even when pinned."""
    lib = _lib_file(tmp_path, make_elf(bits=32, machine=machine) + sdk_line("1.2.3"))
    for pin in ("auto", "1.2.3"):
        with pytest.raises(LibraryVersionError, match=rf"is a {words} build; rkllmd binds the 64-bit"):
            detect_version(lib, pin=pin)


def test_android_double_is_named() -> None:
    """A build carrying the NDK's Android ident note is refused as an Android build, even when pinned."""
    lib = build_fake("13", BUILD_DIR, android=True)
    info = read_elf(lib)
    assert info is not None and info.android
    for pin in ("auto", "1.3.0"):
        with pytest.raises(LibraryVersionError, match=r"is an Android build \(.*\): .*use the Linux build"):
            RkllmLibrary.open(lib, pin=pin)


def test_android_by_needed_library(tmp_path: Path) -> None:
    """A library linked against liblog.so (gcc and ld, real dynamic section) is an Android build."""
    (tmp_path / "log.c").write_text(
        "int __android_log_print(int p, const char *t, const char *f, ...) { return 0; }\n"
    )
    (tmp_path / "lib.c").write_text(
        "int __android_log_print(int, const char *, const char *, ...);\n"
        'int rkllm_init(void) { return __android_log_print(0, "rkllm", "x"); }\n'
    )
    gcc = ["gcc", "-shared", "-fPIC", "-o"]
    subprocess.run([*gcc, str(tmp_path / "liblog.so"), str(tmp_path / "log.c")], check=True)
    lib = tmp_path / "librkllmrt.so"
    subprocess.run([*gcc, str(lib), str(tmp_path / "lib.c"), f"-L{tmp_path}", "-llog"], check=True)
    info = read_elf(lib)
    assert info is not None and "liblog.so" in info.needed and info.android
    with pytest.raises(LibraryVersionError, match="is an Android build"):
        detect_version(lib, pin="1.3.0")


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"bits": 32, "machine": EM_ARM, "android_note": True}, r"32-bit ARM \(armeabi-v7a\)"),
        ({"machine": EM_AARCH64, "android_note": True}, r"aarch64 \(arm64-v8a\)"),
        ({"machine": EM_AARCH64, "interp": "/system/bin/linker64"}, r"aarch64 \(arm64-v8a\)"),
        ({"machine": EM_AARCH64, "needed": ["libc.so", "libandroid.so"]}, r"aarch64 \(arm64-v8a\)"),
    ],
)
def test_android_builds_are_named(tmp_path: Path, kw: dict[str, Any], words: str) -> None:
    """Each Android marker (ident note, bionic linker, Android-only NEEDED) names the build."""
    lib = _lib_file(tmp_path, make_elf(**kw) + sdk_line("1.2.3"))
    with pytest.raises(LibraryVersionError, match=rf"is an Android build \({words}\)"):
        detect_version(lib)


@pytest.mark.parametrize(
    ("platform_name", "words"),
    [
        ("android_arm64-v8a", "is the android_arm64-v8a build of RKLLM 1.2.3 .*an Android build"),
        (
            "android_armeabi-v7a",
            r"is the android_armeabi-v7a build of RKLLM 1.2.3 \(32-bit\).*an Android build",
        ),
        ("linux_armhf", r"is the linux_armhf build of RKLLM 1.2.3 \(32-bit ARM"),
    ],
)
def test_blob_table_platform_is_named(tmp_path: Path, platform_name: str, words: str) -> None:
    """A blob id the table places on Android or 32-bit ARM is refused naming that build."""
    lib = _lib_file(tmp_path, make_elf() + b"\0" * 64)
    with pytest.raises(LibraryVersionError, match=words):
        detect_version(lib, pin="1.2.3", extra_blob_ids={git_blob_id(lib): ("1.2.3", platform_name)})


def test_known_android_blob_ids_are_in_the_table() -> None:
    """Every release from 1.0.0 has its Android arm64-v8a blob id in the table."""
    android = {rel for rel, plat in _lib.BLOB_IDS.values() if plat == "android_arm64-v8a"}
    assert android == set(_lib.RELEASES) - {"1.3.1"}


def test_big_endian_build_is_named(tmp_path: Path) -> None:
    """A big-endian ELF is refused as such."""
    lib = _lib_file(tmp_path, make_elf(little_endian=False, machine=EM_AARCH64) + sdk_line("1.2.3"))
    with pytest.raises(LibraryVersionError, match="is a big-endian aarch64 build"):
        detect_version(lib)


def test_other_os_build_is_named(tmp_path: Path) -> None:
    """An ELF whose OS ABI is FreeBSD is refused as not Linux."""
    lib = patched_header(fake_library("12"), tmp_path / "librkllmrt.so", osabi=9)
    with pytest.raises(LibraryVersionError, match="is built for FreeBSD, not Linux"):
        detect_version(lib)


def test_executable_is_not_a_shared_library(tmp_path: Path) -> None:
    """An ELF executable (ET_EXEC) posing as the library is refused."""
    lib = patched_header(fake_library("12"), tmp_path / "librkllmrt.so", e_type=2)
    with pytest.raises(LibraryVersionError, match="is an executable, not a shared library"):
        detect_version(lib)


def test_cut_elf_header_falls_back_to_identification(tmp_path: Path) -> None:
    """A file with the ELF magic but no whole header is judged by hash, string and pin as before."""
    lib = _lib_file(tmp_path, b"\x7fELF this is not the runtime")
    assert read_elf(lib) is None
    with pytest.raises(LibraryVersionError, match=r"cannot tell.*runtime_version"):
        detect_version(lib)
