"""ctypes declarations shared by every RKLLM ABI family we bind (1.2.0 … 1.3.1).

Everything here is byte-identical across the families that import it (checked against the
vendor header of each release; see docs/RKLLM.md). LP64 only: pointers and size_t are 8 bytes,
enums 4, bool 1. Each declaration sits under a comment giving the C shape it mirrors, written in
our own words. Importing this module loads no library.
"""

from __future__ import annotations

from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_char_p,
    c_float,
    c_int,
    c_int8,
    c_int32,
    c_size_t,
    c_uint8,
    c_uint32,
    c_void_p,
)
from dataclasses import dataclass
from typing import Any

# ---- enums (all C enums are 4-byte ints; values unchanged since 1.2.0) ------------------

# enum LLMCallState { NORMAL = 0, WAITING = 1, FINISH = 2, ERROR = 3 }
RKLLM_RUN_NORMAL = 0
RKLLM_RUN_WAITING = 1
RKLLM_RUN_FINISH = 2
RKLLM_RUN_ERROR = 3

# enum RKLLMInputType { PROMPT = 0, TOKEN = 1, EMBED = 2, MULTIMODAL = 3 }
RKLLM_INPUT_PROMPT = 0
RKLLM_INPUT_TOKEN = 1
RKLLM_INPUT_EMBED = 2
RKLLM_INPUT_MULTIMODAL = 3

# enum RKLLMInferMode { GENERATE = 0, GET_LAST_HIDDEN_LAYER = 1, GET_LOGITS = 2 }
RKLLM_INFER_GENERATE = 0
RKLLM_INFER_GET_LAST_HIDDEN_LAYER = 1
RKLLM_INFER_GET_LOGITS = 2

# Result-callback return values (int callbacks, 1.2.1+): 0 go on, 1 pause, 2 (1.3.0) free buffer.
CALLBACK_CONTINUE = 0
CALLBACK_PAUSE = 1

# typedef void* LLMHandle;
LLMHandle = c_void_p


# ---- structs identical from 1.1.0 to 1.3.1 ------------------------------------------------


# struct RKLLMLoraAdapter { const char* lora_adapter_path; const char* lora_adapter_name; float scale; }
class RKLLMLoraAdapter(Structure):
    _fields_ = [
        ("lora_adapter_path", c_char_p),
        ("lora_adapter_name", c_char_p),
        ("scale", c_float),
    ]


# struct RKLLMEmbedInput { float* embed; size_t n_tokens; }
class RKLLMEmbedInput(Structure):
    _fields_ = [
        ("embed", POINTER(c_float)),
        ("n_tokens", c_size_t),
    ]


# struct RKLLMTokenInput { int32_t* input_ids; size_t n_tokens; }
class RKLLMTokenInput(Structure):
    _fields_ = [
        ("input_ids", POINTER(c_int32)),
        ("n_tokens", c_size_t),
    ]


# struct RKLLMLoraParam { const char* lora_adapter_name; }
class RKLLMLoraParam(Structure):
    _fields_ = [("lora_adapter_name", c_char_p)]


# struct RKLLMPromptCacheParam { int save_prompt_cache; const char* prompt_cache_path; }
class RKLLMPromptCacheParam(Structure):
    _fields_ = [
        ("save_prompt_cache", c_int),
        ("prompt_cache_path", c_char_p),
    ]


# struct RKLLMResultLastHiddenLayer { const float* hidden_states; int embd_size; int num_tokens; }
class RKLLMResultLastHiddenLayer(Structure):
    _fields_ = [
        ("hidden_states", POINTER(c_float)),
        ("embd_size", c_int),
        ("num_tokens", c_int),
    ]


# struct RKLLMResultLogits { const float* logits; int vocab_size; int num_tokens; }   (1.2.0+)
class RKLLMResultLogits(Structure):
    _fields_ = [
        ("logits", POINTER(c_float)),
        ("vocab_size", c_int),
        ("num_tokens", c_int),
    ]


# ---- structs identical in 1.2.1 … 1.3.1 ----------------------------------------------------


# struct RKLLMExtendParam {                 (1.2.1+; 120 bytes)
#     int32_t base_domain_id; int8_t embed_flash; int8_t enabled_cpus_num;
#     uint32_t enabled_cpus_mask; uint8_t n_batch; int8_t use_cross_attn; uint8_t reserved[104]; }
class RKLLMExtendParam(Structure):
    _fields_ = [
        ("base_domain_id", c_int32),
        ("embed_flash", c_int8),
        ("enabled_cpus_num", c_int8),
        ("enabled_cpus_mask", c_uint32),
        ("n_batch", c_uint8),
        ("use_cross_attn", c_int8),
        ("reserved", c_uint8 * 104),
    ]


# struct RKLLMCrossAttnParam {              (1.2.1+)
#     float* encoder_k_cache; float* encoder_v_cache; float* encoder_mask;
#     int32_t* encoder_pos; int num_tokens; }
class RKLLMCrossAttnParam(Structure):
    _fields_ = [
        ("encoder_k_cache", POINTER(c_float)),
        ("encoder_v_cache", POINTER(c_float)),
        ("encoder_mask", POINTER(c_float)),
        ("encoder_pos", POINTER(c_int32)),
        ("num_tokens", c_int),
    ]


# struct RKLLMPerfStat {                    (1.2.1+; inline in RKLLMResult, valid at FINISH)
#     float prefill_time_ms; int prefill_tokens; float generate_time_ms; int generate_tokens;
#     float memory_usage_mb; }
class RKLLMPerfStat(Structure):
    _fields_ = [
        ("prefill_time_ms", c_float),
        ("prefill_tokens", c_int),
        ("generate_time_ms", c_float),
        ("generate_tokens", c_int),
        ("memory_usage_mb", c_float),
    ]


# struct RKLLMResult {                      (1.2.1+; 72 bytes)
#     const char* text; int32_t token_id; RKLLMResultLastHiddenLayer last_hidden_layer;
#     RKLLMResultLogits logits; RKLLMPerfStat perf; }
class RKLLMResult(Structure):
    _fields_ = [
        ("text", c_char_p),
        ("token_id", c_int32),
        ("last_hidden_layer", RKLLMResultLastHiddenLayer),
        ("logits", RKLLMResultLogits),
        ("perf", RKLLMPerfStat),
    ]


# int (*LLMResultCallback)(RKLLMResult* result, void* userdata, LLMCallState state);   (1.2.1+)
ResultCallbackInt: Any = CFUNCTYPE(c_int, POINTER(RKLLMResult), c_void_p, c_int)

# ---- function tables ----------------------------------------------------------------------

# A function table maps each exported name to (restype, argtypes) for ctypes.
FunctionTable = dict[str, tuple[Any, list[Any]]]


def functions_1_2_1_plus(
    param: type[Structure], inp: type[Structure], infer: type[Structure], init_cb: Any
) -> FunctionTable:
    """The public API of 1.2.1 … 1.3.1: same names and shapes except the structs and init's 3rd arg."""
    return {
        # RKLLMParam rkllm_createDefaultParam(void);   (struct returned by value)
        "rkllm_createDefaultParam": (param, []),
        # int rkllm_init(LLMHandle* handle, RKLLMParam* param, <callback> cb);
        "rkllm_init": (c_int, [POINTER(LLMHandle), POINTER(param), init_cb]),
        # int rkllm_load_lora(LLMHandle, RKLLMLoraAdapter*);
        "rkllm_load_lora": (c_int, [LLMHandle, POINTER(RKLLMLoraAdapter)]),
        # int rkllm_load_prompt_cache(LLMHandle, const char* path);
        "rkllm_load_prompt_cache": (c_int, [LLMHandle, c_char_p]),
        # int rkllm_release_prompt_cache(LLMHandle);
        "rkllm_release_prompt_cache": (c_int, [LLMHandle]),
        # int rkllm_destroy(LLMHandle);
        "rkllm_destroy": (c_int, [LLMHandle]),
        # int rkllm_run(LLMHandle, RKLLMInput*, RKLLMInferParam*, void* userdata);
        "rkllm_run": (c_int, [LLMHandle, POINTER(inp), POINTER(infer), c_void_p]),
        # int rkllm_run_async(LLMHandle, RKLLMInput*, RKLLMInferParam*, void* userdata);
        "rkllm_run_async": (c_int, [LLMHandle, POINTER(inp), POINTER(infer), c_void_p]),
        # int rkllm_abort(LLMHandle);
        "rkllm_abort": (c_int, [LLMHandle]),
        # int rkllm_is_running(LLMHandle);
        "rkllm_is_running": (c_int, [LLMHandle]),
        # int rkllm_clear_kv_cache(LLMHandle, int keep_system_prompt, int* start_pos, int* end_pos);
        "rkllm_clear_kv_cache": (c_int, [LLMHandle, c_int, POINTER(c_int), POINTER(c_int)]),
        # int rkllm_get_kv_cache_size(LLMHandle, int* cache_sizes /* n_batch ints */);
        "rkllm_get_kv_cache_size": (c_int, [LLMHandle, POINTER(c_int)]),
        # int rkllm_set_chat_template(LLMHandle, const char* system, const char* prefix, const char* postfix);
        "rkllm_set_chat_template": (c_int, [LLMHandle, c_char_p, c_char_p, c_char_p]),
        # int rkllm_set_function_tools(LLMHandle, const char* system, const char* tools,
        #                              const char* tool_response_str);
        "rkllm_set_function_tools": (c_int, [LLMHandle, c_char_p, c_char_p, c_char_p]),
        # int rkllm_set_cross_attn_params(LLMHandle, RKLLMCrossAttnParam*);
        "rkllm_set_cross_attn_params": (c_int, [LLMHandle, POINTER(RKLLMCrossAttnParam)]),
    }


# Functions that appeared after 1.2.0 (the oldest release we bind): name -> first release.
FUNCTION_SINCE: dict[str, str] = {
    "rkllm_get_kv_cache_size": "1.2.1",
    "rkllm_set_function_tools": "1.2.1",
    "rkllm_set_cross_attn_params": "1.2.1",
}

# Functions a library may lack and still be loaded: serving a model never calls them, and their
# absence says nothing about the layout family. They are left undeclared, and calling one raises
# LibraryVersionError. Every other function of a family is required (see RkllmLibrary.open).
OPTIONAL_FUNCTIONS: frozenset[str] = frozenset(
    {
        "rkllm_createDefaultParam",
        "rkllm_load_lora",
        "rkllm_load_prompt_cache",
        "rkllm_release_prompt_cache",
        "rkllm_run_async",
        "rkllm_is_running",
        "rkllm_set_cross_attn_params",
    }
)


@dataclass(frozen=True)
class AbiSpec:
    """Everything runtime.py needs to drive one ABI family without knowing which it is."""

    family: str
    versions: tuple[str, ...]
    Param: type[Structure]
    ExtendParam: type[Structure]
    Input: type[Structure]
    InferParam: type[Structure]
    Result: type[Structure]
    result_callback: Any  # the CFUNCTYPE class of LLMResultCallback
    functions: FunctionTable
    callback_returns_int: bool  # False before 1.2.1: the callback is void
    has_perf: bool  # RKLLMResult.perf exists (1.2.1+)
    has_role: bool  # RKLLMInput.role / enable_thinking exist (1.2.1+)
    per_run_limits: bool  # RKLLMInferParam.sampling_params / max_new_tokens (1.3.0+)
    Callback: type[Structure] | None = None  # RKLLMCallback (1.3.0+): init takes a pointer to it
    SamplingParam: type[Structure] | None = None
    optional: frozenset[str] = OPTIONAL_FUNCTIONS  # may be missing from a build (see above)
    # Where the layouts come from and how sure they are (logged when the library is loaded).
    layout_source: str = "the vendor's rkllm.h of the release, compiled for sizeof/offsetof (certain)"

    @property
    def required(self) -> tuple[str, ...]:
        """The functions a library of this family must export to be loaded at all."""
        return tuple(name for name in self.functions if name not in self.optional)
