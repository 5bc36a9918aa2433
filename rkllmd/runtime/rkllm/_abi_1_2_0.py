"""ctypes layout of RKLLM family D: releases 1.2.0 and 1.2.1b1 (beta).

Differences from 1.2.1 that matter: the result callback returns void (no pause), RKLLMResult has
no perf block (48 bytes), RKLLMInput has no role/enable_thinking (input_type at 0, union at 8),
RKLLMExtendParam has no n_batch/use_cross_attn, rkllm_clear_kv_cache takes two arguments, and
get_kv_cache_size / set_function_tools / set_cross_attn_params do not exist. The two releases
differ only inside the multimodal input (24 bytes in 1.2.0, 48 in 1.2.1b1).
"""

from __future__ import annotations

from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    Union,
    c_bool,
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
from typing import Any

from rkllmd.runtime.rkllm._abi_common import (
    AbiSpec,
    FunctionTable,
    LLMHandle,
    RKLLMEmbedInput,
    RKLLMLoraAdapter,
    RKLLMLoraParam,
    RKLLMPromptCacheParam,
    RKLLMResultLastHiddenLayer,
    RKLLMResultLogits,
    RKLLMTokenInput,
)


# struct RKLLMExtendParam {                 (120 bytes)
#     int32_t base_domain_id; int8_t embed_flash; int8_t enabled_cpus_num;
#     uint32_t enabled_cpus_mask; uint8_t reserved[106]; }
class RKLLMExtendParam(Structure):
    _fields_ = [
        ("base_domain_id", c_int32),
        ("embed_flash", c_int8),
        ("enabled_cpus_num", c_int8),
        ("enabled_cpus_mask", c_uint32),
        ("reserved", c_uint8 * 106),
    ]


# struct RKLLMParam — same fields and offsets as 1.2.1 … 1.2.3, with the older extend param (208 bytes)
class RKLLMParam(Structure):
    _fields_ = [
        ("model_path", c_char_p),
        ("max_context_len", c_int32),
        ("max_new_tokens", c_int32),
        ("top_k", c_int32),
        ("n_keep", c_int32),
        ("top_p", c_float),
        ("temperature", c_float),
        ("repeat_penalty", c_float),
        ("frequency_penalty", c_float),
        ("presence_penalty", c_float),
        ("mirostat", c_int32),
        ("mirostat_tau", c_float),
        ("mirostat_eta", c_float),
        ("skip_special_token", c_bool),
        ("is_async", c_bool),
        ("img_start", c_char_p),
        ("img_end", c_char_p),
        ("img_content", c_char_p),
        ("extend_param", RKLLMExtendParam),
    ]


# struct RKLLMMultiModelInput (1.2.0) { char* prompt; float* image_embed; size_t n_image_tokens; }
class RKLLMMultiModelInput120(Structure):
    _fields_ = [
        ("prompt", c_char_p),
        ("image_embed", POINTER(c_float)),
        ("n_image_tokens", c_size_t),
    ]


# struct RKLLMMultiModelInput (1.2.1b1) { char* prompt; float* image_embed; size_t n_image_tokens;
#                                         size_t n_image; size_t image_width; size_t image_height; }
class RKLLMMultiModelInput121b1(Structure):
    _fields_ = [
        ("prompt", c_char_p),
        ("image_embed", POINTER(c_float)),
        ("n_image_tokens", c_size_t),
        ("n_image", c_size_t),
        ("image_width", c_size_t),
        ("image_height", c_size_t),
    ]


# union { const char* prompt_input; RKLLMEmbedInput; RKLLMTokenInput; RKLLMMultiModelInput; } (1.2.0)
class _InputUnion120(Union):
    _fields_ = [
        ("prompt_input", c_char_p),
        ("embed_input", RKLLMEmbedInput),
        ("token_input", RKLLMTokenInput),
        ("multimodal_input", RKLLMMultiModelInput120),
    ]


# the same union with the 1.2.1b1 multimodal member
class _InputUnion121b1(Union):
    _fields_ = [
        ("prompt_input", c_char_p),
        ("embed_input", RKLLMEmbedInput),
        ("token_input", RKLLMTokenInput),
        ("multimodal_input", RKLLMMultiModelInput121b1),
    ]


# struct RKLLMInput { RKLLMInputType input_type; union { ... }; }   (1.2.0: 32 bytes)
class RKLLMInput120(Structure):
    _anonymous_ = ("u",)
    _fields_ = [("input_type", c_int), ("u", _InputUnion120)]


# struct RKLLMInput { RKLLMInputType input_type; union { ... }; }   (1.2.1b1: 56 bytes)
class RKLLMInput121b1(Structure):
    _anonymous_ = ("u",)
    _fields_ = [("input_type", c_int), ("u", _InputUnion121b1)]


# struct RKLLMInferParam { RKLLMInferMode mode; RKLLMLoraParam* lora_params;
#                          RKLLMPromptCacheParam* prompt_cache_params; int keep_history; }  (32 bytes)
class RKLLMInferParam(Structure):
    _fields_ = [
        ("mode", c_int),
        ("lora_params", POINTER(RKLLMLoraParam)),
        ("prompt_cache_params", POINTER(RKLLMPromptCacheParam)),
        ("keep_history", c_int),
    ]


# struct RKLLMResult { const char* text; int32_t token_id;
#                      RKLLMResultLastHiddenLayer last_hidden_layer; RKLLMResultLogits logits; }  (48 bytes)
class RKLLMResult(Structure):
    _fields_ = [
        ("text", c_char_p),
        ("token_id", c_int32),
        ("last_hidden_layer", RKLLMResultLastHiddenLayer),
        ("logits", RKLLMResultLogits),
    ]


# void (*LLMResultCallback)(RKLLMResult*, void* userdata, LLMCallState);
ResultCallback: Any = CFUNCTYPE(None, POINTER(RKLLMResult), c_void_p, c_int)


def _functions(inp: type[Structure]) -> FunctionTable:
    return {
        # RKLLMParam rkllm_createDefaultParam(void);
        "rkllm_createDefaultParam": (RKLLMParam, []),
        # int rkllm_init(LLMHandle* handle, RKLLMParam* param, LLMResultCallback callback);
        "rkllm_init": (c_int, [POINTER(LLMHandle), POINTER(RKLLMParam), ResultCallback]),
        # int rkllm_load_lora(LLMHandle, RKLLMLoraAdapter*);
        "rkllm_load_lora": (c_int, [LLMHandle, POINTER(RKLLMLoraAdapter)]),
        # int rkllm_load_prompt_cache(LLMHandle, const char* path);
        "rkllm_load_prompt_cache": (c_int, [LLMHandle, c_char_p]),
        # int rkllm_release_prompt_cache(LLMHandle);
        "rkllm_release_prompt_cache": (c_int, [LLMHandle]),
        # int rkllm_destroy(LLMHandle);
        "rkllm_destroy": (c_int, [LLMHandle]),
        # int rkllm_run(LLMHandle, RKLLMInput*, RKLLMInferParam*, void* userdata);
        "rkllm_run": (c_int, [LLMHandle, POINTER(inp), POINTER(RKLLMInferParam), c_void_p]),
        # int rkllm_run_async(LLMHandle, RKLLMInput*, RKLLMInferParam*, void* userdata);
        "rkllm_run_async": (c_int, [LLMHandle, POINTER(inp), POINTER(RKLLMInferParam), c_void_p]),
        # int rkllm_abort(LLMHandle);
        "rkllm_abort": (c_int, [LLMHandle]),
        # int rkllm_is_running(LLMHandle);
        "rkllm_is_running": (c_int, [LLMHandle]),
        # int rkllm_clear_kv_cache(LLMHandle, int keep_system_prompt);   (two arguments only)
        "rkllm_clear_kv_cache": (c_int, [LLMHandle, c_int]),
        # int rkllm_set_chat_template(LLMHandle, const char* system, const char* prefix, const char* postfix);
        "rkllm_set_chat_template": (c_int, [LLMHandle, c_char_p, c_char_p, c_char_p]),
    }


def _spec(version: str, inp: type[Structure]) -> AbiSpec:
    return AbiSpec(
        family="D",
        versions=(version,),
        Param=RKLLMParam,
        ExtendParam=RKLLMExtendParam,
        Input=inp,
        InferParam=RKLLMInferParam,
        Result=RKLLMResult,
        result_callback=ResultCallback,
        functions=_functions(inp),
        callback_returns_int=False,
        has_perf=False,
        has_role=False,
        per_run_limits=False,
    )


SPEC_1_2_0 = _spec("1.2.0", RKLLMInput120)
SPEC_1_2_1B1 = _spec("1.2.1b1", RKLLMInput121b1)
