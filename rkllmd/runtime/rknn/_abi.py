"""ctypes declarations of the RKNN runtime (librknnrt.so, C API ``rknn_api.h``), the part rkllmd calls.

Transcribed by hand from the vendor header of RKNN releases 1.6.0, 2.0.0b0, 2.1.0, 2.2.0, 2.3.0
and 2.3.2 (airockchip/rknn-toolkit2, rknpu2/runtime/Linux/librknn_api/include/rknn_api.h; the
same 2.3.2 header ships in airockchip/rknn-llm's multimodal demo): every struct and function
below is identical in all six (docs/VISION.md). LP64 only (aarch64, and x86_64 for the tests):
``rknn_context`` is ``uint64_t`` there (the header makes it ``uint32_t`` only under ``__arm__``),
pointers are 8 bytes and C enums 4. Each declaration sits under the C shape it mirrors, written
in our own words. Importing this module loads no library.
"""

from __future__ import annotations

from ctypes import (
    POINTER,
    Structure,
    c_char,
    c_char_p,
    c_float,
    c_int,
    c_int8,
    c_int32,
    c_int64,
    c_uint8,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import Any

# typedef uint64_t rknn_context;   (uint32_t under __arm__, which rkllmd does not bind)
rknn_context = c_uint64

# #define RKNN_MAX_DIMS 16, RKNN_MAX_NAME_LEN 256
RKNN_MAX_DIMS = 16
RKNN_MAX_NAME_LEN = 256

# ---- return codes (#define RKNN_SUCC 0, RKNN_ERR_* negative) ----------------------------------

RKNN_SUCC = 0
# code -> (macro name, what the header says it means, in our words)
RKNN_ERRORS: dict[int, tuple[str, str]] = {
    -1: ("RKNN_ERR_FAIL", "the call failed"),
    -2: ("RKNN_ERR_TIMEOUT", "timed out"),
    -3: ("RKNN_ERR_DEVICE_UNAVAILABLE", "the NPU device is unavailable"),
    -4: ("RKNN_ERR_MALLOC_FAIL", "out of memory"),
    -5: ("RKNN_ERR_PARAM_INVALID", "a parameter is invalid"),
    -6: ("RKNN_ERR_MODEL_INVALID", "the model is invalid"),
    -7: ("RKNN_ERR_CTX_INVALID", "the context is invalid"),
    -8: ("RKNN_ERR_INPUT_INVALID", "the input is invalid"),
    -9: ("RKNN_ERR_OUTPUT_INVALID", "the output is invalid"),
    -10: ("RKNN_ERR_DEVICE_UNMATCH", "the device does not match: update the RKNN runtime and NPU driver"),
    -11: ("RKNN_ERR_INCOMPATILE_PRE_COMPILE_MODEL", "a pre-compiled model this driver cannot run"),
    -12: ("RKNN_ERR_INCOMPATILE_OPTIMIZATION_LEVEL_VERSION", "an optimisation level this driver lacks"),
    -13: (
        "RKNN_ERR_TARGET_PLATFORM_UNMATCH",
        "the model was converted for another platform (target_platform)",
    ),
}

# ---- enums --------------------------------------------------------------------------------

# enum rknn_query_cmd { IN_OUT_NUM = 0, INPUT_ATTR = 1, OUTPUT_ATTR = 2, PERF_DETAIL = 3,
#                       PERF_RUN = 4, SDK_VERSION = 5, … }
RKNN_QUERY_IN_OUT_NUM = 0
RKNN_QUERY_INPUT_ATTR = 1
RKNN_QUERY_OUTPUT_ATTR = 2
RKNN_QUERY_PERF_RUN = 4
RKNN_QUERY_SDK_VERSION = 5

# enum rknn_tensor_type { FLOAT32 = 0, FLOAT16, INT8, UINT8, INT16, UINT16, INT32, UINT32, INT64,
#                         BOOL, INT4, BFLOAT16 (2.3.0+) }
RKNN_TENSOR_FLOAT32 = 0
RKNN_TENSOR_FLOAT16 = 1
RKNN_TENSOR_INT8 = 2
RKNN_TENSOR_UINT8 = 3
TENSOR_TYPE_NAMES = ("FP32", "FP16", "INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32", "INT64", "BOOL")

# enum rknn_tensor_format { NCHW = 0, NHWC = 1, NC1HWC2 = 2, UNDEFINED = 3 }
RKNN_TENSOR_NCHW = 0
RKNN_TENSOR_NHWC = 1
TENSOR_FORMAT_NAMES = ("NCHW", "NHWC", "NC1HWC2", "UNDEFINED")

# enum rknn_core_mask { AUTO = 0, CORE_0 = 1, CORE_1 = 2, CORE_2 = 4, CORE_0_1 = 3, CORE_0_1_2 = 7,
#                       ALL = 0xffff (2.0.0b0+) }
RKNN_NPU_CORE_AUTO = 0
RKNN_NPU_CORE_0_1_2 = 7

# ---- structs --------------------------------------------------------------------------------


# struct rknn_input_output_num { uint32_t n_input; uint32_t n_output; }          8 bytes
class RknnInputOutputNum(Structure):
    _fields_ = [("n_input", c_uint32), ("n_output", c_uint32)]


# struct rknn_tensor_attr {
#   uint32_t index;                 set by the caller before RKNN_QUERY_*_ATTR
#   uint32_t n_dims; uint32_t dims[16]; char name[256];
#   uint32_t n_elems; uint32_t size;
#   rknn_tensor_format fmt; rknn_tensor_type type; rknn_tensor_qnt_type qnt_type;
#   int8_t fl; int32_t zp; float scale;
#   uint32_t w_stride; uint32_t size_with_stride; uint8_t pass_through; uint32_t h_stride; }  376 bytes
class RknnTensorAttr(Structure):
    _fields_ = [
        ("index", c_uint32),
        ("n_dims", c_uint32),
        ("dims", c_uint32 * RKNN_MAX_DIMS),
        ("name", c_char * RKNN_MAX_NAME_LEN),
        ("n_elems", c_uint32),
        ("size", c_uint32),
        ("fmt", c_int),
        ("type", c_int),
        ("qnt_type", c_int),
        ("fl", c_int8),
        ("zp", c_int32),
        ("scale", c_float),
        ("w_stride", c_uint32),
        ("size_with_stride", c_uint32),
        ("pass_through", c_uint8),
        ("h_stride", c_uint32),
    ]


# struct rknn_perf_run { int64_t run_duration; }   microseconds of the last run      8 bytes
class RknnPerfRun(Structure):
    _fields_ = [("run_duration", c_int64)]


# struct rknn_sdk_version { char api_version[256]; char drv_version[256]; }         512 bytes
class RknnSdkVersion(Structure):
    _fields_ = [("api_version", c_char * 256), ("drv_version", c_char * 256)]


# struct rknn_input { uint32_t index; void* buf; uint32_t size; uint8_t pass_through;
#                     rknn_tensor_type type; rknn_tensor_format fmt; }               32 bytes
class RknnInput(Structure):
    _fields_ = [
        ("index", c_uint32),
        ("buf", c_void_p),
        ("size", c_uint32),
        ("pass_through", c_uint8),
        ("type", c_int),
        ("fmt", c_int),
    ]


# struct rknn_output { uint8_t want_float; uint8_t is_prealloc; uint32_t index; void* buf;
#                      uint32_t size; }                                              24 bytes
class RknnOutput(Structure):
    _fields_ = [
        ("want_float", c_uint8),
        ("is_prealloc", c_uint8),
        ("index", c_uint32),
        ("buf", c_void_p),
        ("size", c_uint32),
    ]


# struct rknn_init_extend (2.1.0+) { rknn_context ctx; int32_t real_model_offset;
#   uint32_t real_model_size; int32_t model_buffer_fd; uint32_t model_buffer_flags;
#   uint8_t reserved[112]; }                                                       136 bytes
# (1.6.0 and 2.0.0b0 have reserved[120] where model_buffer_fd/flags sit: the same size and the
# same offsets for the rest. rkllmd always passes NULL.)
class RknnInitExtend(Structure):
    _fields_ = [
        ("ctx", rknn_context),
        ("real_model_offset", c_int32),
        ("real_model_size", c_uint32),
        ("model_buffer_fd", c_int32),
        ("model_buffer_flags", c_uint32),
        ("reserved", c_uint8 * 112),
    ]


# struct rknn_run_extend { uint64_t frame_id; int32_t non_block; int32_t timeout_ms;
#                          int32_t fence_fd; }                                        24 bytes
class RknnRunExtend(Structure):
    _fields_ = [
        ("frame_id", c_uint64),
        ("non_block", c_int32),
        ("timeout_ms", c_int32),
        ("fence_fd", c_int32),
    ]


# struct rknn_output_extend { uint64_t frame_id; }                                    8 bytes
class RknnOutputExtend(Structure):
    _fields_ = [("frame_id", c_uint64)]


# ---- functions (all return int: RKNN_SUCC or an RKNN_ERR_*) -----------------------------------

FUNCTIONS: dict[str, tuple[Any, list[Any]]] = {
    # int rknn_init(rknn_context* context, void* model, uint32_t size, uint32_t flag,
    #               rknn_init_extend* extend);   size 0: model is a NUL-terminated file path
    "rknn_init": (c_int, [POINTER(rknn_context), c_char_p, c_uint32, c_uint32, POINTER(RknnInitExtend)]),
    # int rknn_destroy(rknn_context context);
    "rknn_destroy": (c_int, [rknn_context]),
    # int rknn_query(rknn_context context, rknn_query_cmd cmd, void* info, uint32_t size);
    "rknn_query": (c_int, [rknn_context, c_int, c_void_p, c_uint32]),
    # int rknn_inputs_set(rknn_context context, uint32_t n_inputs, rknn_input inputs[]);
    "rknn_inputs_set": (c_int, [rknn_context, c_uint32, POINTER(RknnInput)]),
    # int rknn_set_core_mask(rknn_context context, rknn_core_mask core_mask);
    "rknn_set_core_mask": (c_int, [rknn_context, c_int]),
    # int rknn_run(rknn_context context, rknn_run_extend* extend);
    "rknn_run": (c_int, [rknn_context, POINTER(RknnRunExtend)]),
    # int rknn_outputs_get(rknn_context context, uint32_t n_outputs, rknn_output outputs[],
    #                      rknn_output_extend* extend);
    "rknn_outputs_get": (c_int, [rknn_context, c_uint32, POINTER(RknnOutput), POINTER(RknnOutputExtend)]),
    # int rknn_outputs_release(rknn_context context, uint32_t n_ouputs, rknn_output outputs[]);
    "rknn_outputs_release": (c_int, [rknn_context, c_uint32, POINTER(RknnOutput)]),
}

# Without these the encoder cannot run: a library lacking one is refused at load.
REQUIRED = (
    "rknn_init",
    "rknn_destroy",
    "rknn_query",
    "rknn_inputs_set",
    "rknn_run",
    "rknn_outputs_get",
    "rknn_outputs_release",
)

# The oldest release whose header declares the function, as far as the headers checked go (1.6.0
# is the oldest checked: an entry of 1.6.0 means "at least since then").
FUNCTION_SINCE: dict[str, str] = dict.fromkeys(FUNCTIONS, "1.6.0")


def error_name(rc: int) -> str:
    """``RKNN_ERR_MODEL_INVALID: the model is invalid`` for -6; a bare code for one the header lacks."""
    name, meaning = RKNN_ERRORS.get(rc, (f"RKNN error {rc}", "not a code the header defines"))
    return f"{name}: {meaning}"
