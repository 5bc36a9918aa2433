"""The RKNN binding: ctypes layouts equal gcc's for the header as transcribed, the library is
identified before use, and the calls work through ctypes against the C double."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rkllmd.errors import LibraryVersionError, RuntimeNotInstalled
from rkllmd.runtime.rknn import _abi
from rkllmd.runtime.rknn._lib import RknnLibrary, detect_version, find_library, version_key
from tests.fake_rknn.build import (
    BUILD_DIR,
    ENUMS,
    STRUCT_FIELDS,
    build_fake_rknn,
    probe_layout,
    write_model,
)

CTYPES: dict[str, type[ctypes.Structure]] = {
    "rknn_input_output_num": _abi.RknnInputOutputNum,
    "rknn_tensor_attr": _abi.RknnTensorAttr,
    "rknn_perf_run": _abi.RknnPerfRun,
    "rknn_sdk_version": _abi.RknnSdkVersion,
    "rknn_input": _abi.RknnInput,
    "rknn_output": _abi.RknnOutput,
    "rknn_init_extend": _abi.RknnInitExtend,
    "rknn_run_extend": _abi.RknnRunExtend,
    "rknn_output_extend": _abi.RknnOutputExtend,
}

# sizeof on LP64 from the vendor's rknn_api.h 2.1.0 … 2.3.2 compiled with gcc (1.6.0 and 2.0.0b0
# agree on all of them; their init_extend has reserved[120] in place of two fields), docs/VISION.md.
VENDOR_SIZES = {
    "rknn_input_output_num": 8,
    "rknn_tensor_attr": 376,
    "rknn_perf_run": 8,
    "rknn_sdk_version": 512,
    "rknn_input": 32,
    "rknn_output": 24,
    "rknn_init_extend": 136,
    "rknn_run_extend": 24,
    "rknn_output_extend": 8,
}


@pytest.fixture(scope="module")
def layout() -> dict[str, object]:
    return probe_layout(BUILD_DIR)


@pytest.fixture(scope="module")
def lib() -> RknnLibrary:
    return RknnLibrary.open(build_fake_rknn(BUILD_DIR))


@pytest.mark.parametrize("struct", list(STRUCT_FIELDS))
def test_ctypes_layout_equals_gcc(struct: str, layout: dict[str, dict[str, object]]) -> None:
    c = layout[struct]
    cls = CTYPES[struct]
    assert [name for name, *_ in cls._fields_] == STRUCT_FIELDS[struct]
    assert (ctypes.sizeof(cls), ctypes.alignment(cls)) == (c["size"], c["align"])
    assert ctypes.sizeof(cls) == VENDOR_SIZES[struct]
    for name in STRUCT_FIELDS[struct]:
        field = getattr(cls, name)
        assert (field.offset, field.size) == (c["fields"][name], c["field_sizes"][name]), name  # type: ignore[index]


def test_enums_and_scalar_types_equal_gcc(layout: dict[str, dict[str, int]]) -> None:
    for name in ENUMS:
        assert getattr(_abi, name) == layout["enums"][name], name
    assert layout["sizeof"]["rknn_context"] == ctypes.sizeof(_abi.rknn_context) == 8
    assert layout["sizeof"]["rknn_tensor_type"] == 4


def test_tensor_attr_offsets_by_number() -> None:
    # The fields the encoder reads, at the offsets the vendor header gives them on LP64.
    a = _abi.RknnTensorAttr
    assert (a.n_dims.offset, a.dims.offset, a.name.offset, a.size.offset, a.fmt.offset, a.type.offset) == (
        4, 8, 72, 332, 336, 340,
    )  # fmt: skip
    assert (_abi.RknnInput.buf.offset, _abi.RknnInput.type.offset, _abi.RknnOutput.buf.offset) == (8, 24, 8)


def test_detected_by_its_version_string(lib: RknnLibrary) -> None:
    assert (lib.version, lib.detection.method) == ("2.3.2", "string")


def test_a_release_between_checked_headers_is_accepted() -> None:
    assert detect_version(build_fake_rknn(BUILD_DIR, "2.3.1")).version == "2.3.1"


def test_no_version_string_is_refused_unless_pinned() -> None:
    path = build_fake_rknn(BUILD_DIR, version_line=False)
    with pytest.raises(LibraryVersionError, match="cannot tell which RKNN runtime"):
        detect_version(path)
    assert detect_version(path, pin="2.3.2").method == "pin"
    with pytest.raises(LibraryVersionError, match="not a release whose header rkllmd checked"):
        detect_version(path, pin="2.4.0")


def test_newer_and_older_releases_are_refused() -> None:
    with pytest.raises(LibraryVersionError, match=r"2\.4\.0 .*newer than 2\.3\.2.*pin 2\.3\.2"):
        detect_version(build_fake_rknn(BUILD_DIR, "2.4.0"))
    with pytest.raises(LibraryVersionError, match=r"1\.5\.2 .*not between 1\.6\.0 and 2\.3\.2"):
        detect_version(build_fake_rknn(BUILD_DIR, "1.5.2"))
    assert detect_version(build_fake_rknn(BUILD_DIR, "2.4.0"), pin="2.3.2").version == "2.3.2"


def test_blob_table_refuses_android_and_32_bit_builds() -> None:
    path = build_fake_rknn(BUILD_DIR, "2.3.0")
    from rkllmd.runtime._libident import git_blob_id

    blob = git_blob_id(path)
    with pytest.raises(LibraryVersionError, match=r"android_arm64-v8a build of librknnrt 2\.3\.0"):
        detect_version(path, extra_blob_ids={blob: ("2.3.0", "android_arm64-v8a")})
    with pytest.raises(LibraryVersionError, match="linux_armhf build"):
        detect_version(path, extra_blob_ids={blob: ("2.3.0", "linux_armhf")})
    assert detect_version(path, extra_blob_ids={blob: ("2.3.0", "linux_aarch64")}).method == "hash"


def test_version_order() -> None:
    assert version_key("1.6.0") < version_key("2.0.0b0") < version_key("2.0.0") < version_key("2.3.2")
    assert version_key("2.0.0-beta0") == version_key("2.0.0b0")


def test_a_configured_library_that_does_not_exist_is_named(tmp_path: Path) -> None:
    with pytest.raises(RuntimeNotInstalled, match="does not exist"):
        find_library(tmp_path / "librknnrt.so")


def test_calls_through_ctypes(lib: RknnLibrary, tmp_path: Path) -> None:
    model = write_model(tmp_path / "m.rknn", size=(40, 30), grid=(5, 3), embed=4)
    ctx = _abi.rknn_context()
    assert lib.fn("rknn_init")(ctypes.byref(ctx), str(model).encode(), 0, 0, None) == 0
    try:
        num = _abi.RknnInputOutputNum()
        assert lib.fn("rknn_query")(ctx, _abi.RKNN_QUERY_IN_OUT_NUM, ctypes.byref(num), 8) == 0
        assert (num.n_input, num.n_output) == (1, 1)
        attr = _abi.RknnTensorAttr(index=0)
        rc = lib.fn("rknn_query")(ctx, _abi.RKNN_QUERY_INPUT_ATTR, ctypes.byref(attr), ctypes.sizeof(attr))
        assert rc == 0
        assert list(attr.dims[: attr.n_dims]) == [1, 30, 40, 3] and attr.fmt == _abi.RKNN_TENSOR_NHWC
        attr = _abi.RknnTensorAttr(index=0)
        lib.fn("rknn_query")(ctx, _abi.RKNN_QUERY_OUTPUT_ATTR, ctypes.byref(attr), ctypes.sizeof(attr))
        assert list(attr.dims[: attr.n_dims]) == [1, 15, 4] and attr.name == b"embeds_0"
        # The runtime checks the size it is given; a struct one byte short is refused.
        short = lib.fn("rknn_query")(ctx, _abi.RKNN_QUERY_INPUT_ATTR, ctypes.byref(attr), 375)
        assert short == -5
        ver = _abi.RknnSdkVersion()
        assert lib.fn("rknn_query")(ctx, _abi.RKNN_QUERY_SDK_VERSION, ctypes.byref(ver), 512) == 0
        assert ver.api_version.startswith(b"2.3.2 (")
    finally:
        assert lib.fn("rknn_destroy")(ctx) == 0


def test_importing_loads_no_library() -> None:
    code = (
        "import rkllmd.runtime.rknn._lib, rkllmd.runtime.rknn._abi, sys\n"
        "maps = open('/proc/self/maps').read()\n"
        "assert 'rknnrt' not in maps, 'loaded at import'\n"
        "assert 'pydantic' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def test_a_function_the_build_lacks_names_the_release_it_needs() -> None:
    lib = RknnLibrary.open(build_fake_rknn(BUILD_DIR, omit_core_mask=True))
    assert not lib.has("rknn_set_core_mask") and lib.has("rknn_run")
    with pytest.raises(
        LibraryVersionError, match=r"rknn_set_core_mask requires runtime ≥ 1\.6\.0 built with it"
    ):
        lib.fn("rknn_set_core_mask")


def test_the_encoder_imports_no_structlog_nor_pydantic() -> None:
    """It runs in the runtime's worker process, which imports neither (tests/test_worker_imports.py)."""
    code = (
        "import rkllmd.runtime.rknn.encoder, rkllmd.runtime.rkllm.multimodal, sys\n"
        "bad = [m for m in ('structlog', 'pydantic', 'subprocess') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
