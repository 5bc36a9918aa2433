"""Telling the release from the vendor's real string layout, on the double and copies of it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import structlog

from rkllmd.errors import LibraryVersionError
from rkllmd.runtime._libident import git_blob_id
from rkllmd.runtime.rkllm._lib import (
    SUPPORTED,
    RkllmLibrary,
    detect_version,
    scan_sdk_versions,
)
from rkllmd.runtime.rkllm.settings import RkllmModelSettings
from tests.fake_rkllm.build import build_fake
from tests.fake_rkllm.derive import (
    make_elf,
    modified_copy,
    sdk_line,
    stripped_copy,
    with_extra_sdk_line,
    without_sdk_line,
)
from tests.rkllm_conftest_fixtures import BUILD_DIR, fake_library

PRINTF_FORMAT = b"I rkllm: rkllm-runtime version: %s, rknpu driver version: %s, platform: %s"
SUPPORTED_LIST = "1.2.0, 1.2.1b1, 1.2.1, 1.2.2, 1.2.3, 1.3.0, 1.3.1"


@pytest.mark.parametrize(
    ("abi", "version"), [("120", "1.2.0"), ("12", "1.2.3"), ("13", "1.3.0"), ("131", "1.3.1")]
)
def test_double_holds_the_vendor_string_forms(abi: str, version: str) -> None:
    """The double holds the SDK line, the printf format and the rknn line, and no filled-in version."""
    data = fake_library(abi).read_bytes()
    assert re.search(rb"RKLLM SDK \(version: " + version.encode() + rb" \| target: Linux \| build: ", data)
    assert PRINTF_FORMAT in data
    assert b"rknn llm lib version: 2.3.3b0" in data
    assert re.search(rb"rkllm-runtime version:? ?v?\d", data) is None


def test_old_version_literal_is_not_used(tmp_path: Path) -> None:
    """A bare 'rkllm-runtime version: X' literal (a form the vendor never ships) places nothing."""
    p = tmp_path / "librkllmrt.so"
    p.write_bytes(make_elf() + b"rkllm-runtime version: 1.2.3\0")
    with pytest.raises(LibraryVersionError, match="cannot tell"):
        detect_version(p)


def test_rknn_version_is_not_taken_for_the_release(tmp_path: Path) -> None:
    """A copy holding only the rknn line and the printf format cannot be placed by string."""
    lib = without_sdk_line(fake_library("12"), tmp_path / "librkllmrt.so")
    data = lib.read_bytes()
    assert b"rknn llm lib version: 2.3.3b0" in data and PRINTF_FORMAT in data
    assert scan_sdk_versions(lib) == ()
    with pytest.raises(LibraryVersionError, match="no 'RKLLM SDK") as ei:
        detect_version(lib)
    assert "2.3.3" not in str(ei.value) and 'runtime_version = "1.3.1"' in str(ei.value)


def test_double_built_without_sdk_line_needs_a_pin() -> None:
    """A build with no SDK line is refused unless pinned, and loads under a pin."""
    lib = build_fake("12", BUILD_DIR, sdk_line=False)
    with pytest.raises(LibraryVersionError, match="cannot tell"):
        detect_version(lib)
    assert RkllmLibrary.open(lib, pin="1.2.3").detection.method == "pin"


def test_stripped_copy_is_identified_and_loads(tmp_path: Path) -> None:
    """strip --strip-all changes the blob id but keeps the SDK line: detected by string, loads."""
    src = fake_library("13")
    lib = stripped_copy(src, tmp_path / "librkllmrt.so")
    assert git_blob_id(lib) != git_blob_id(src) and lib.stat().st_size < src.stat().st_size
    det = detect_version(lib)
    assert (det.version, det.method) == ("1.3.0", "string")
    assert RkllmLibrary.open(lib).version == "1.3.0"


def test_modified_copy_is_identified_and_loads(tmp_path: Path) -> None:
    """A copy with bytes changed outside the string (a rebuild, a repackage) is detected by string."""
    src = fake_library("12")
    lib = modified_copy(src, tmp_path / "librkllmrt.so")
    assert git_blob_id(lib) != git_blob_id(src)
    det = detect_version(lib)
    assert (det.version, det.method) == ("1.2.3", "string")
    assert RkllmLibrary.open(lib).version == "1.2.3"


def test_real_sdk_line_form_is_read(tmp_path: Path) -> None:
    """The line exactly as in the 1.2.1b1 string dump gives 1.2.1b1."""
    p = tmp_path / "librkllmrt.so"
    p.write_bytes(
        make_elf() + b"\0" + PRINTF_FORMAT + b"\0rknn llm lib version: 2.3.3b0\0" + sdk_line("1.2.1b1")
    )
    det = detect_version(p)
    assert (det.version, det.method) == ("1.2.1b1", "string")


def test_two_sdk_versions_are_ambiguous(tmp_path: Path) -> None:
    """A file holding SDK lines of two releases is refused, naming both."""
    lib = with_extra_sdk_line(fake_library("12"), tmp_path / "librkllmrt.so", "1.2.2")
    assert scan_sdk_versions(lib) == ("1.2.3", "1.2.2")
    with pytest.raises(LibraryVersionError, match=r"several releases \(1\.2\.3, 1\.2\.2\).*runtime_version"):
        detect_version(lib)


def test_same_sdk_version_twice_is_not_ambiguous(tmp_path: Path) -> None:
    """The same SDK line twice is one release."""
    lib = with_extra_sdk_line(fake_library("12"), tmp_path / "librkllmrt.so", "1.2.3")
    assert detect_version(lib).version == "1.2.3"


def test_pin_settles_an_ambiguous_file(tmp_path: Path) -> None:
    """A supported pin places a file with two SDK versions, with a warning."""
    lib = with_extra_sdk_line(fake_library("12"), tmp_path / "librkllmrt.so", "1.2.2")
    with structlog.testing.capture_logs() as logs:
        det = detect_version(lib, pin="1.2.3")
    assert (det.version, det.method) == ("1.2.3", "pin")
    assert any(e["event"] == "rkllm_version_pin_overrides" and e["log_level"] == "warning" for e in logs)


@pytest.mark.parametrize("version", ["1.3.2", "1.4.0"])
def test_newer_release_is_refused(version: str) -> None:
    """A release newer than 1.3.1 is refused, naming it, the supported releases and how to pin."""
    lib = build_fake("131", BUILD_DIR, version=version)
    with pytest.raises(LibraryVersionError) as ei:
        RkllmLibrary.open(lib)
    msg = str(ei.value)
    assert f"is RKLLM runtime {version} (by its RKLLM SDK line)" in msg
    assert "newer than 1.3.1" in msg and "does not guess" in msg
    assert f"supported: {SUPPORTED_LIST}" in msg
    assert 'runtime_version = "1.3.1"' in msg and "at your own risk" in msg
    assert ei.value.data["version"] == version


@pytest.mark.parametrize("version", ["1.2.4", "1.3.0rc1"])
def test_unknown_release_is_refused(version: str, tmp_path: Path) -> None:
    """A release number rkllmd does not know is refused, named as found, with how to pin."""
    p = tmp_path / "librkllmrt.so"
    p.write_bytes(make_elf() + sdk_line(version))
    with pytest.raises(
        LibraryVersionError, match=rf"{re.escape(version)} .*not a release rkllmd knows.*own risk"
    ):
        detect_version(p)


def test_pin_overrides_a_newer_release_with_a_warning() -> None:
    """Pinning a supported release loads a newer library at the user's risk, with a warning."""
    lib = build_fake("131", BUILD_DIR, version="1.3.2")
    with structlog.testing.capture_logs() as logs:
        loaded = RkllmLibrary.open(lib, pin="1.3.1")
    assert (loaded.version, loaded.detection.method) == ("1.3.1", "pin")
    warn = [e for e in logs if e["event"] == "rkllm_version_pin_overrides"]
    assert warn and warn[0]["detected"] == "1.3.2" and warn[0]["log_level"] == "warning"


def test_pin_of_the_newer_release_itself_is_refused() -> None:
    """runtime_version = "1.3.2" names a release without a layout: refused, listing the supported ones."""
    lib = build_fake("131", BUILD_DIR, version="1.3.2")
    with pytest.raises(
        LibraryVersionError, match=r"'1\.3\.2' pins an unknown RKLLM release.*supported: 1\.2\.0"
    ):
        detect_version(lib, pin="1.3.2")


def test_settings_describe_every_supported_pin() -> None:
    """The runtime_version description lists every release that can be pinned."""
    desc = RkllmModelSettings.model_fields["runtime_version"].description or ""
    listed = re.findall(r"\d+\.\d+\.\d+(?:b\d+)?", desc)
    assert listed == list(SUPPORTED)
