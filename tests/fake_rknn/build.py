"""Build the RKNN runtime test double and probe the C layouts of its header. Importing does nothing.

``build_fake_rknn(out_dir, version)`` compiles fake_rknn.c with gcc into ``out_dir`` and returns the
.so path (named by a hash of sources and options, so repeated calls reuse it). ``probe_layout(out_dir)``
compiles a small C program against rknn_double.h that prints each struct's size, alignment and
every field's offset and size, and returns them parsed. ``write_model(path, …)`` writes the
double's "model file".
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path
from typing import Any

from tests.cdouble import build_shared, run_probe, struct_lines

HERE = Path(__file__).resolve().parent
#: where the tests build the double: RKLLMD_FAKE_BUILD_DIR, else a folder in the temp directory
BUILD_DIR = Path(os.environ.get("RKLLMD_FAKE_BUILD_DIR", Path(tempfile.gettempdir()) / "rkllmd-fake-rknn"))
SOURCE = HERE / "fake_rknn.c"
HEADER = HERE / "rknn_double.h"
CFLAGS = ["-std=c11", "-O1", "-g", "-fPIC", "-Wall", "-Wextra", "-Werror"]

# Every struct rkllmd binds, with its fields in declaration order (names as in rknn_api.h).
STRUCT_FIELDS: dict[str, list[str]] = {
    "rknn_input_output_num": ["n_input", "n_output"],
    "rknn_tensor_attr": [
        "index", "n_dims", "dims", "name", "n_elems", "size", "fmt", "type", "qnt_type", "fl", "zp",
        "scale", "w_stride", "size_with_stride", "pass_through", "h_stride",
    ],
    "rknn_perf_run": ["run_duration"],
    "rknn_sdk_version": ["api_version", "drv_version"],
    "rknn_input": ["index", "buf", "size", "pass_through", "type", "fmt"],
    "rknn_output": ["want_float", "is_prealloc", "index", "buf", "size"],
    "rknn_init_extend": [
        "ctx", "real_model_offset", "real_model_size", "model_buffer_fd", "model_buffer_flags", "reserved",
    ],
    "rknn_run_extend": ["frame_id", "non_block", "timeout_ms", "fence_fd"],
    "rknn_output_extend": ["frame_id"],
}  # fmt: skip
ENUMS = (
    "RKNN_QUERY_IN_OUT_NUM",
    "RKNN_QUERY_INPUT_ATTR",
    "RKNN_QUERY_OUTPUT_ATTR",
    "RKNN_QUERY_PERF_RUN",
    "RKNN_QUERY_SDK_VERSION",
    "RKNN_TENSOR_FLOAT32",
    "RKNN_TENSOR_FLOAT16",
    "RKNN_TENSOR_UINT8",
    "RKNN_TENSOR_NCHW",
    "RKNN_TENSOR_NHWC",
    "RKNN_NPU_CORE_AUTO",
    "RKNN_NPU_CORE_0_1_2",
)


def build_fake_rknn(
    out_dir: Path, version: str = "2.3.2", *, version_line: bool = True, omit_core_mask: bool = False
) -> Path:
    """Compile the double; ``version`` is the release in its ``librknnrt version: X (…)`` literal."""
    if not version or any(c in version for c in '"\\\n'):
        raise ValueError(f"bad version string {version!r}")
    defines = [f'-DFAKE_RKNN_VERSION="{version}"']
    defines += [] if version_line else ["-DFAKE_RKNN_NO_VERSION_LINE"]
    defines += ["-DFAKE_RKNN_OMIT_SET_CORE_MASK"] if omit_core_mask else []
    return build_shared(SOURCE, HEADER, CFLAGS, defines, Path(out_dir) / f"librknnrt_fake_{version}")


def stat(lib: Any, name: str) -> int:
    """One of the loaded double's counters (``runs``, ``live_contexts``, …), by fake_rknn_stat."""
    fn = lib.cdll.fake_rknn_stat
    fn.restype, fn.argtypes = ctypes.c_long, [ctypes.c_char_p]
    return int(fn(name.encode()))


def write_model(
    path: Path,
    *,
    size: tuple[int, int] = (56, 56),
    grid: tuple[int, int] = (4, 4),
    embed: int = 8,
    outputs: int = 1,
    dims: int = 3,
    channels: int = 3,
    delay_ms: int = 0,
    fail: str | None = None,
) -> Path:
    """A model file for the double: input ``size`` (width, height), a ``grid`` (cols, rows) of tokens."""
    lines = [
        "FAKE-RKNN",
        f"input {size[1]} {size[0]} {channels}",
        f"grid {grid[1]} {grid[0]}",
        f"embed {embed}",
        f"outputs {outputs}",
        f"dims {dims}",
        f"delay_ms {delay_ms}",
    ]
    if fail:
        lines.append(f"fail {fail}")
    path.write_text("\n".join(lines) + "\n")
    return path


def probe_layout(out_dir: Path) -> dict[str, Any]:
    """sizeof/alignof/offsetof of every struct field of rknn_double.h, from gcc.

    ``{struct: {"size", "align", "fields": {name: offset}, "field_sizes": {name: size}}}`` plus
    ``{"enums": {name: value}, "sizeof": {type: size}}``.
    """
    body = struct_lines(STRUCT_FIELDS)
    body += [f'printf("ENUM {e} %d\\n", (int){e});' for e in ENUMS]
    body += [f'printf("SIZEOF {t} %zu\\n", sizeof({t}));' for t in ("rknn_context", "rknn_tensor_type")]
    return run_probe(HEADER, body, Path(out_dir) / "rknn_layout_probe", [])
