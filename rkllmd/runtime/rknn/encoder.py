"""A vision encoder: one ``.rknn`` file run by librknnrt, turning an image into the LLM's image tokens.

The calls are the vendor multimodal demo's (airockchip/rknn-llm examples/multimodal_model_demo,
image_enc.cc): ``rknn_init`` with the file's path, the input and output attributes from
``rknn_query``, then per image ``rknn_inputs_set`` (uint8 NHWC RGB at the model's input size),
``rknn_run``, ``rknn_outputs_get`` with ``want_float`` and ``rknn_outputs_release``. The image
tokens and their width come from the first output's dims (the first dimension above 1 is the
token count, the next the width); an encoder with several outputs (Qwen3-VL's "deepstack") gives
each token the outputs side by side, output 0 first, as the demo concatenates them.

Thread: whichever thread owns the model (the inference thread, or the runtime's worker process);
calls are serialised by a lock, and the context is released by ``close()`` (or ``with``).
"""

from __future__ import annotations

import ctypes
import threading
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rkllmd import logface
from rkllmd.errors import ModelLoadError, RuntimeCallError, RuntimeFailure
from rkllmd.runtime.rknn._abi import (
    RKNN_QUERY_IN_OUT_NUM,
    RKNN_QUERY_INPUT_ATTR,
    RKNN_QUERY_OUTPUT_ATTR,
    RKNN_QUERY_PERF_RUN,
    RKNN_QUERY_SDK_VERSION,
    RKNN_TENSOR_FLOAT32,
    RKNN_TENSOR_NCHW,
    RKNN_TENSOR_NHWC,
    RKNN_TENSOR_UINT8,
    TENSOR_FORMAT_NAMES,
    TENSOR_TYPE_NAMES,
    RknnInput,
    RknnInputOutputNum,
    RknnOutput,
    RknnPerfRun,
    RknnSdkVersion,
    RknnTensorAttr,
    error_name,
    rknn_context,
)
from rkllmd.runtime.rknn._lib import RknnLibrary, load_library
from rkllmd.vision.families import FAMILIES, VisionFamily, family
from rkllmd.vision.images import prepare
from rkllmd.vision.limits import DEFAULT_LIMITS, ImageLimits

log = logface.get_logger(__name__)


@dataclass(frozen=True)
class TensorInfo:
    """What ``rknn_query`` says of one input or output tensor."""

    index: int
    name: str
    dims: tuple[int, ...]
    fmt: str
    type: str
    size: int

    @classmethod
    def from_attr(cls, a: RknnTensorAttr) -> TensorInfo:
        def name_of(names: tuple[str, ...], i: int) -> str:
            return names[i] if 0 <= i < len(names) else str(i)

        return cls(
            index=a.index,
            name=a.name.decode("utf-8", "replace"),
            dims=tuple(a.dims[: min(a.n_dims, len(a.dims))]),
            fmt=name_of(TENSOR_FORMAT_NAMES, a.fmt),
            type=name_of(TENSOR_TYPE_NAMES, a.type),
            size=a.size,
        )


@dataclass(frozen=True)
class ImageEmbedding:
    """One image's tokens: ``n_tokens`` rows of ``embed_size`` float32, row-major in ``data``."""

    data: array[float]
    n_tokens: int
    embed_size: int
    width: int  # the encoder's input size: RKLLM's image_width / image_height
    height: int
    decode_ms: float  # decoding and preprocessing
    encode_ms: float  # inputs_set through outputs_get
    npu_ms: float | None  # the runtime's own figure for the run (RKNN_QUERY_PERF_RUN), when it gives one

    def row(self, i: int) -> array[float]:
        return self.data[i * self.embed_size : (i + 1) * self.embed_size]


def _tokens_and_width(dims: tuple[int, ...]) -> tuple[int, int]:
    # The demo's rule: the first dimension above 1 is the token count, the next one the width
    # ([1, T, E] and [T, E] alike); a single token ([1, 1, E]) is the last two.
    for i, d in enumerate(dims[:-1]):
        if d > 1:
            return d, dims[i + 1]
    if len(dims) >= 2 and dims[-1] > 0:
        return dims[-2], dims[-1]
    raise ValueError(f"output dims {list(dims)} hold no token axis")


class VisionEncoder:
    """A loaded ``.rknn`` vision encoder; ``encode(image_bytes)`` gives an ``ImageEmbedding``."""

    def __init__(
        self,
        path: Path | str,
        *,
        family_name: str | VisionFamily | None = None,
        library: Path | None = None,
        pin: str = "auto",
        core_mask: int | None = None,
        float_input: bool = False,
        limits: ImageLimits = DEFAULT_LIMITS,
        lib: RknnLibrary | None = None,
    ) -> None:
        self.path = Path(path)
        if isinstance(family_name, VisionFamily):
            self.family = family_name
        else:
            self.family = family(family_name) if family_name else FAMILIES["qwen2-vl"]
        self.float_input = float_input
        self.limits = limits
        self._lock = threading.Lock()
        self._ctx = rknn_context(0)
        if not self.path.is_file():
            raise ModelLoadError(f"the vision encoder {self.path} does not exist", model=str(self.path))
        self.lib = lib or load_library(library, pin)
        t0 = time.perf_counter()
        self._call("rknn_init", ctypes.byref(self._ctx), str(self.path).encode(), 0, 0, None)
        try:
            if core_mask is not None:
                self._call("rknn_set_core_mask", self._ctx, core_mask)
            self._describe()
        except BaseException:
            self.close()
            raise
        self.load_ms = (time.perf_counter() - t0) * 1000.0
        log.info(
            "vision_encoder_loaded",
            model=str(self.path),
            input=f"{self.width}x{self.height}x{self.channels} {self.inputs[0].fmt} {self.inputs[0].type}",
            n_image_tokens=self.n_image_tokens,
            embed_size=self.embed_size,
            outputs=len(self.outputs),
            runtime=self.api_version,
            driver=self.driver_version,
            load_ms=round(self.load_ms, 1),
        )

    # ---- setup ------------------------------------------------------------------------------

    def _call(self, name: str, *args: Any) -> int:
        rc = int(self.lib.fn(name)(*args))
        if rc != 0:
            raise RuntimeCallError(name, rc, f"{error_name(rc)} (vision encoder {self.path})")
        return rc

    def _query(self, cmd: int, info: ctypes.Structure) -> None:
        self._call("rknn_query", self._ctx, cmd, ctypes.byref(info), ctypes.sizeof(info))

    def _describe(self) -> None:
        num = RknnInputOutputNum()
        self._query(RKNN_QUERY_IN_OUT_NUM, num)
        version = RknnSdkVersion()
        self._query(RKNN_QUERY_SDK_VERSION, version)
        self.api_version = version.api_version.decode("utf-8", "replace")
        self.driver_version = version.drv_version.decode("utf-8", "replace")
        if not self.api_version.startswith(self.lib.version + " "):
            log.warning(
                "rknn_version_disagrees", detected=self.lib.version, by=self.lib.detection.method,
                sdk_version=self.api_version, library=str(self.lib.path),
            )  # fmt: skip
        self.inputs = [self._attr(RKNN_QUERY_INPUT_ATTR, i) for i in range(num.n_input)]
        self.outputs = [self._attr(RKNN_QUERY_OUTPUT_ATTR, i) for i in range(num.n_output)]
        if not self.inputs or not self.outputs:
            raise ModelLoadError(
                f"{self.path} has {num.n_input} inputs and {num.n_output} outputs: not an encoder"
            )
        first = self.inputs[0]
        if len(first.dims) != 4:
            raise ModelLoadError(f"{self.path}: input dims {list(first.dims)} are not an image batch")
        if first.fmt == TENSOR_FORMAT_NAMES[RKNN_TENSOR_NCHW]:
            self.channels, self.height, self.width = first.dims[1:4]
        else:
            self.height, self.width, self.channels = first.dims[1:4]
        if self.channels != 3:
            raise ModelLoadError(f"{self.path}: input has {self.channels} channels, an RGB encoder has 3")
        try:
            shapes = {_tokens_and_width(o.dims) for o in self.outputs}
        except ValueError as exc:
            raise ModelLoadError(f"{self.path}: {exc}") from exc
        if len(shapes) != 1:
            raise ModelLoadError(f"{self.path}: its outputs differ in shape ({sorted(shapes)})")
        self.n_image_tokens, self.output_width = shapes.pop()
        self.embed_size = self.output_width * len(self.outputs)

    def _attr(self, cmd: int, index: int) -> TensorInfo:
        attr = RknnTensorAttr()
        attr.index = index
        self._query(cmd, attr)
        return TensorInfo.from_attr(attr)

    # ---- per image ----------------------------------------------------------------------------

    def encode(self, data: bytes) -> ImageEmbedding:
        """One encoded image (JPEG, PNG, WebP) through preprocessing and the encoder."""
        fam = self.family
        prepared = prepare(
            data,
            (self.width, self.height),
            fam.background,
            limits=self.limits,
            normalise_with=(fam.mean, fam.std) if self.float_input else None,
        )
        return self.encode_pixels(prepared.pixels, decode_ms=prepared.decode_ms)

    def encode_pixels(self, pixels: bytes | array[float], *, decode_ms: float = 0.0) -> ImageEmbedding:
        """Pixels already at the input size, RGB, NHWC: uint8 bytes, or float32 for a float encoder."""
        is_float = isinstance(pixels, array)
        if isinstance(pixels, array) and pixels.typecode != "f":
            raise ValueError(f"float pixels must be float32 (array typecode 'f'), not {pixels.typecode!r}")
        n_values = self.width * self.height * self.channels
        if len(pixels) != n_values:
            raise ValueError(f"{len(pixels)} values for a {self.width}x{self.height}x{self.channels} input")
        with self._lock:
            if not self._ctx.value:
                raise RuntimeFailure(f"the vision encoder {self.path} is closed")
            t0 = time.perf_counter()
            buf: Any = pixels if isinstance(pixels, array) else bytearray(pixels)
            c_buf = (ctypes.c_uint8 * (len(buf) * buf.itemsize if is_float else len(buf))).from_buffer(buf)
            inp = (RknnInput * 1)()
            inp[0].index = 0
            inp[0].buf = ctypes.addressof(c_buf)
            inp[0].size = ctypes.sizeof(c_buf)
            inp[0].pass_through = 0
            inp[0].type = RKNN_TENSOR_FLOAT32 if is_float else RKNN_TENSOR_UINT8
            inp[0].fmt = RKNN_TENSOR_NHWC
            self._call("rknn_inputs_set", self._ctx, 1, inp)
            self._call("rknn_run", self._ctx, None)
            data = self._collect()
            encode_ms = (time.perf_counter() - t0) * 1000.0
            del c_buf
            # The runtime's own time for the run; not an error when it has none to give.
            perf = RknnPerfRun()
            query = self.lib.fn("rknn_query")
            rc = query(self._ctx, RKNN_QUERY_PERF_RUN, ctypes.byref(perf), ctypes.sizeof(perf))
            npu = perf.run_duration / 1000.0 if rc == 0 else None
        return ImageEmbedding(
            data, self.n_image_tokens, self.embed_size, self.width, self.height, decode_ms, encode_ms, npu
        )

    def _collect(self) -> array[float]:
        n_out = len(self.outputs)
        outs = (RknnOutput * n_out)()
        for j in range(n_out):
            outs[j].want_float = 1
            outs[j].index = j
        self._call("rknn_outputs_get", self._ctx, n_out, outs, None)
        try:
            row = self.output_width * 4
            want = self.n_image_tokens * row
            for j in range(n_out):
                if outs[j].size != want or not outs[j].buf:
                    raise RuntimeFailure(
                        f"rknn_outputs_get gave output {j} of {self.path} as {outs[j].size} bytes, expected "
                        f"{want} ({self.n_image_tokens} tokens x {self.output_width} float32)"
                    )
            data = array("f", bytes(want * n_out))
            base = data.buffer_info()[0]
            if n_out == 1:
                ctypes.memmove(base, outs[0].buf, want)
            else:
                for i in range(self.n_image_tokens):
                    for j in range(n_out):
                        ctypes.memmove(base + (i * n_out + j) * row, outs[j].buf + i * row, row)
            return data
        finally:
            # All of them (the demo releases only the first of several).
            self._call("rknn_outputs_release", self._ctx, n_out, outs)

    # ---- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the context; idempotent."""
        with self._lock:
            ctx, self._ctx = self._ctx, rknn_context(0)
            if ctx.value:
                self._call_ctx_destroy(ctx)

    def _call_ctx_destroy(self, ctx: rknn_context) -> None:
        rc = int(self.lib.fn("rknn_destroy")(ctx))
        if rc != 0:
            log.warning("rknn_destroy_failed", rc=rc, error=error_name(rc), model=str(self.path))

    @property
    def closed(self) -> bool:
        return not self._ctx.value

    def __enter__(self) -> VisionEncoder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
