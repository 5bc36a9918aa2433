"""ctypes layout of RKLLM family E: releases 1.2.1, 1.2.2 and 1.2.3 (byte-identical headers).

Differences from 1.3.0 that matter: RKLLMParam still carries the three image tag pointers and no
ignore_eos_token (208 bytes, extend_param at 88); RKLLMInferParam has no per-run sampling or
max_new_tokens (32 bytes); rkllm_init takes the result callback function pointer itself.
"""

from __future__ import annotations

from ctypes import POINTER, Structure, Union, c_bool, c_char_p, c_float, c_int, c_int32, c_size_t
from typing import Any

from rkllmd.runtime.rkllm._abi_common import (
    AbiSpec,
    ResultCallbackInt,
    RKLLMEmbedInput,
    RKLLMExtendParam,
    RKLLMLoraParam,
    RKLLMPromptCacheParam,
    RKLLMResult,
    RKLLMTokenInput,
    functions_1_2_1_plus,
)


# struct RKLLMParam {                                  (208 bytes)
#     const char* model_path; int32_t max_context_len; int32_t max_new_tokens; int32_t top_k;
#     int32_t n_keep; float top_p; float temperature; float repeat_penalty; float frequency_penalty;
#     float presence_penalty; int32_t mirostat; float mirostat_tau; float mirostat_eta;
#     bool skip_special_token; bool is_async;
#     const char* img_start; const char* img_end; const char* img_content;
#     RKLLMExtendParam extend_param; }
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


# struct RKLLMMultiModalInput {                        (48 bytes; "MultiModel" before 1.2.3)
#     char* prompt; float* image_embed; size_t n_image_tokens; size_t n_image;
#     size_t image_width; size_t image_height; }
class RKLLMMultiModalInput(Structure):
    _fields_ = [
        ("prompt", c_char_p),
        ("image_embed", POINTER(c_float)),
        ("n_image_tokens", c_size_t),
        ("n_image", c_size_t),
        ("image_width", c_size_t),
        ("image_height", c_size_t),
    ]


# the anonymous union inside RKLLMInput:
#     union { const char* prompt_input; RKLLMEmbedInput embed_input;
#             RKLLMTokenInput token_input; RKLLMMultiModalInput multimodal_input; }
class _InputUnion(Union):
    _fields_ = [
        ("prompt_input", c_char_p),
        ("embed_input", RKLLMEmbedInput),
        ("token_input", RKLLMTokenInput),
        ("multimodal_input", RKLLMMultiModalInput),
    ]


# struct RKLLMInput {                                  (64 bytes)
#     const char* role; bool enable_thinking; RKLLMInputType input_type; union { ... }; }
class RKLLMInput(Structure):
    _anonymous_ = ("u",)
    _fields_ = [
        ("role", c_char_p),
        ("enable_thinking", c_bool),
        ("input_type", c_int),
        ("u", _InputUnion),
    ]


# struct RKLLMInferParam {                             (32 bytes)
#     RKLLMInferMode mode; RKLLMLoraParam* lora_params;
#     RKLLMPromptCacheParam* prompt_cache_params; int keep_history; }
class RKLLMInferParam(Structure):
    _fields_ = [
        ("mode", c_int),
        ("lora_params", POINTER(RKLLMLoraParam)),
        ("prompt_cache_params", POINTER(RKLLMPromptCacheParam)),
        ("keep_history", c_int),
    ]


# int (*LLMResultCallback)(RKLLMResult*, void* userdata, LLMCallState);
# rkllm_init's third parameter is this function pointer itself.
ResultCallback: Any = ResultCallbackInt

SPEC = AbiSpec(
    family="E",
    versions=("1.2.1", "1.2.2", "1.2.3"),
    Param=RKLLMParam,
    ExtendParam=RKLLMExtendParam,
    Input=RKLLMInput,
    InferParam=RKLLMInferParam,
    Result=RKLLMResult,
    result_callback=ResultCallback,
    functions=functions_1_2_1_plus(RKLLMParam, RKLLMInput, RKLLMInferParam, ResultCallback),
    callback_returns_int=True,
    has_perf=True,
    has_role=True,
    per_run_limits=False,
)
