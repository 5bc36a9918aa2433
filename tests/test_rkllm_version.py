"""Finding librkllmrt.so and telling its release without calling into it."""

from __future__ import annotations

import ctypes.util
import hashlib
import os
import subprocess
from pathlib import Path

import pytest
import structlog

from rkllmd.errors import LibraryVersionError, RuntimeNotInstalled
from rkllmd.runtime._libident import git_blob_id
from rkllmd.runtime.rkllm import _lib
from rkllmd.runtime.rkllm._lib import (
    BLOB_IDS,
    SUPPORTED,
    RkllmLibrary,
    detect_version,
    find_library,
    scan_sdk_versions,
    version_key,
)
from tests.fake_rkllm.derive import make_elf, sdk_line
from tests.rkllm_conftest_fixtures import BUILD_DIR, fake_library, layout_json

ELF64 = make_elf()  # a 64-bit shared-object header for this host's architecture
ELF32 = make_elf(bits=32, machine=40)


def _blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@pytest.fixture
def elf_file(tmp_path: Path) -> Path:
    p = tmp_path / "librkllmrt.so"
    p.write_bytes(ELF64 + os.urandom(4096))
    return p


def test_git_blob_id_is_the_git_object_id(tmp_path: Path) -> None:
    """git_blob_id hashes "blob <len>\\0" + contents, exactly as git hash-object does."""
    p = tmp_path / "f"
    p.write_bytes(b"hello\n")
    assert git_blob_id(p) == "ce013625030ba8dba906f756967f9e9ca394464a"
    big = os.urandom(3 << 20)
    p.write_bytes(big)
    assert git_blob_id(p) == _blob(big)


def test_blob_table_covers_every_release_build_of_the_fact_sheet() -> None:
    """Every id the fact sheet JSON lists (all platforms, armeabi-v7a included) is in the table."""
    data = layout_json()
    if data is None:
        pytest.skip("rkllm-layout.json not found beside the repo")
    ids = data["_so_git_blob_sha1"]["ids"]
    want = {sha: (rel, plat) for rel, plats in ids.items() for plat, sha in plats.items()}
    assert want == BLOB_IDS


def test_hash_match_identifies_the_release(elf_file: Path) -> None:
    """A file whose blob id is in the (extended) table is identified by hash."""
    extra = {git_blob_id(elf_file): ("1.2.2", "linux_aarch64")}
    det = detect_version(elf_file, extra_blob_ids=extra)
    assert (det.version, det.method, det.platform) == ("1.2.2", "hash", "linux_aarch64")


def test_hash_wins_over_the_version_string(tmp_path: Path) -> None:
    """When both the hash and an embedded version string are present, the hash decides."""
    p = tmp_path / "lib.so"
    p.write_bytes(ELF64 + sdk_line("1.2.1"))
    det = detect_version(p, extra_blob_ids={git_blob_id(p): ("1.3.0", "linux_aarch64")})
    assert (det.version, det.method) == ("1.3.0", "hash")


def test_32bit_builds_are_refused_by_hash(elf_file: Path) -> None:
    """An armhf build matched by hash is refused: our layouts are LP64."""
    extra = {git_blob_id(elf_file): ("1.3.0", "linux_armhf")}
    with pytest.raises(LibraryVersionError, match="32-bit"):
        detect_version(elf_file, extra_blob_ids=extra)


def test_32bit_elf_is_refused(tmp_path: Path) -> None:
    """A 32-bit ELF file is refused even when it carries a supported version string."""
    p = tmp_path / "lib.so"
    p.write_bytes(ELF32 + sdk_line("1.2.3"))
    with pytest.raises(LibraryVersionError, match="32-bit"):
        detect_version(p)


@pytest.mark.parametrize(("abi", "version"), [("120", "1.2.0"), ("12", "1.2.3"), ("13", "1.3.0")])
def test_version_string_fallback_on_the_doubles(abi: str, version: str) -> None:
    """The built doubles are identified by their RKLLM SDK line."""
    lib = fake_library(abi)
    assert scan_sdk_versions(lib) == (version,)
    det = detect_version(lib)
    assert (det.version, det.method) == (version, "string")


def test_pin_wins_and_warns_when_detection_disagrees() -> None:
    """A pin overrides detection, and a disagreement is logged as a warning."""
    lib = fake_library("12")  # says 1.2.3
    with structlog.testing.capture_logs() as logs:
        det = detect_version(lib, pin="1.2.1")
    assert (det.version, det.method) == ("1.2.1", "pin")
    warn = [e for e in logs if e["event"] == "rkllm_version_pin_disagrees"]
    assert warn and warn[0]["detected"] == "1.2.3" and warn[0]["log_level"] == "warning"


def test_pin_places_an_unknown_library(elf_file: Path) -> None:
    """A library nothing else can place is accepted under a supported pin."""
    det = detect_version(elf_file, pin="1.3.0")
    assert (det.version, det.method) == ("1.3.0", "pin")


@pytest.mark.parametrize("pin", ["1.1.4", "1.0.1", "9.9.9"])
def test_pin_of_an_unsupported_version_is_an_error(elf_file: Path, pin: str) -> None:
    """A pin naming an unsupported or unknown release is refused, listing the supported ones."""
    with pytest.raises(LibraryVersionError, match=r"supported: 1\.2\.0"):
        detect_version(elf_file, pin=pin)


def test_unknown_shared_object_is_refused(tmp_path: Path) -> None:
    """A random .so without a known hash or version string is refused with how to pin."""
    src = tmp_path / "x.c"
    src.write_text("int not_rkllm(void) { return 0; }\n")
    so = tmp_path / "librkllmrt.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    with pytest.raises(LibraryVersionError, match="runtime_version") as ei:
        detect_version(so)
    assert git_blob_id(so) in str(ei.value)


def test_text_file_is_refused(tmp_path: Path) -> None:
    """A text file posing as the library is refused."""
    p = tmp_path / "librkllmrt.so"
    p.write_text("not a library\n")
    with pytest.raises(LibraryVersionError, match="cannot tell"):
        detect_version(p)


@pytest.mark.parametrize("version", ["1.1.4", "1.0.1"])
def test_recognised_but_unsupported_version_is_refused(version: str) -> None:
    """A library saying it is an old release is refused with the list of supported versions."""
    lib = fake_library("12", version=version)
    with pytest.raises(LibraryVersionError, match=f"{version}.*does not support.*1.2.1, 1.2.2, 1.2.3, 1.3.0"):
        RkllmLibrary.open(lib)


def test_missing_function_raises_requires_runtime() -> None:
    """Calling for a function the loaded release lacks names the release that added it."""
    lib = RkllmLibrary.open(fake_library("120"))
    assert lib.version == "1.2.0"
    with pytest.raises(
        LibraryVersionError, match=r"rkllm_get_kv_cache_size requires runtime ≥ 1\.2\.1, loaded 1\.2\.0"
    ):
        lib.fn("rkllm_get_kv_cache_size")
    assert lib.has("rkllm_set_chat_template") and not lib.has("rkllm_set_function_tools")


def test_symbols_contradicting_a_1_3_detection_are_refused() -> None:
    """A library claiming 1.3.0 but lacking rkllm_set_function_tools is refused after dlopen."""
    lib = fake_library("120", version="1.3.0")
    with pytest.raises(LibraryVersionError, match=r"lacks rkllm_get_kv_cache_size.*1\.2\.0 or 1\.2\.1b1"):
        RkllmLibrary.open(lib)


def test_symbols_contradicting_a_1_2_0_detection_are_refused() -> None:
    """A library claiming 1.2.0 but exporting the 1.2.1 functions is refused after dlopen."""
    lib = fake_library("12", version="1.2.0")
    with pytest.raises(LibraryVersionError, match="exports rkllm_set_function_tools"):
        RkllmLibrary.open(lib)


def test_open_declares_argtypes_for_every_function() -> None:
    """After open every function of the release has argtypes and restype set."""
    lib = RkllmLibrary.open(fake_library("13"))
    for name, (restype, argtypes) in lib.spec.functions.items():
        fn = lib.fn(name)
        assert fn.restype is restype and list(fn.argtypes) == argtypes, name


def test_version_order_puts_betas_first() -> None:
    """1.2.1b1 sorts between 1.2.0 and 1.2.1; the release list is in order."""
    assert version_key("1.2.0") < version_key("1.2.1b1") < version_key("1.2.1") < version_key("1.3.0")
    assert list(_lib.RELEASES) == sorted(_lib.RELEASES, key=version_key)
    assert set(SUPPORTED) <= set(_lib.RELEASES)


def test_find_library_prefers_the_configured_paths(tmp_path: Path) -> None:
    """The model's library wins over [rkllm].library; a configured but missing path is an error."""
    a, b = tmp_path / "a.so", tmp_path / "b.so"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    assert find_library(a, b) == a
    assert find_library(None, b) == b
    with pytest.raises(RuntimeNotInstalled, match="does not exist"):
        find_library(tmp_path / "missing.so", b)


def test_find_library_searches_the_usual_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without configuration the search dirs are tried; nothing found raises RuntimeNotInstalled."""
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    with pytest.raises(RuntimeNotInstalled, match=r"librkllmrt\.so not found"):
        find_library(None, None, search_dirs=(tmp_path,))
    (tmp_path / "librkllmrt.so").write_bytes(b"x")
    assert find_library(None, None, search_dirs=(tmp_path,)) == tmp_path / "librkllmrt.so"


def test_build_dir_is_reused() -> None:
    """Building the same double twice returns the cached file."""
    assert fake_library("13") == fake_library("13")
    assert fake_library("13").parent == BUILD_DIR
