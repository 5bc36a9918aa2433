"""ctypes layout of RKLLM family F: releases 1.3.0 and 1.3.1.

Differences from 1.2.x that matter: RKLLMParam drops the image tags and gains ignore_eos_token
(184 bytes, extend_param at 60); the multimodal input nests image and video sub-structs
(144 bytes, RKLLMInput 160); RKLLMInferParam gains per-run sampling and max_new_tokens
(40 bytes); rkllm_init takes a pointer to an RKLLMCallback struct instead of a function pointer.

1.3.1 (F') appends a third sub-struct, audio, to the multimodal input (192 bytes, RKLLMInput 208;
the union stays at 16) and is otherwise 1.3.0. That layout is second-hand: the 1.3.1 header was
not reachable here (see LAYOUT_1_3_1 and docs/RKLLM.md).
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
    c_int32,
    c_size_t,
    c_uint64,
    c_void_p,
)
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


# struct RKLLMParam {                                  (184 bytes)
#     const char* model_path; int32_t max_context_len; int32_t max_new_tokens; int32_t top_k;
#     int32_t n_keep; float top_p; float temperature; float repeat_penalty; float frequency_penalty;
#     float presence_penalty; int32_t mirostat; float mirostat_tau; float mirostat_eta;
#     bool skip_special_token; bool ignore_eos_token; bool is_async;
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
        ("ignore_eos_token", c_bool),
        ("is_async", c_bool),
        ("extend_param", RKLLMExtendParam),
    ]


# the unnamed struct type of RKLLMMultiModalInput.image:
#     { float* image_embed; size_t n_image_tokens; size_t n_image; const char* image_start;
#       const char* image_end; const char* image_content; size_t image_width; size_t image_height; }
class RKLLMImageInput(Structure):
    _fields_ = [
        ("image_embed", POINTER(c_float)),
        ("n_image_tokens", c_size_t),
        ("n_image", c_size_t),
        ("image_start", c_char_p),
        ("image_end", c_char_p),
        ("image_content", c_char_p),
        ("image_width", c_size_t),
        ("image_height", c_size_t),
    ]


# the unnamed struct type of RKLLMMultiModalInput.video:
#     { float* video_embed; size_t n_frame_tokens; size_t n_frame_per_video; size_t n_video;
#       const char* video_start; const char* video_end; const char* video_content;
#       size_t frame_width; size_t frame_height; }
class RKLLMVideoInput(Structure):
    _fields_ = [
        ("video_embed", POINTER(c_float)),
        ("n_frame_tokens", c_size_t),
        ("n_frame_per_video", c_size_t),
        ("n_video", c_size_t),
        ("video_start", c_char_p),
        ("video_end", c_char_p),
        ("video_content", c_char_p),
        ("frame_width", c_size_t),
        ("frame_height", c_size_t),
    ]


# struct RKLLMMultiModalInput { char* prompt; <image struct> image; <video struct> video; }  (144 bytes)
class RKLLMMultiModalInput(Structure):
    _fields_ = [
        ("prompt", c_char_p),
        ("image", RKLLMImageInput),
        ("video", RKLLMVideoInput),
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


# struct RKLLMInput {                                  (160 bytes)
#     const char* role; bool enable_thinking; RKLLMInputType input_type; union { ... }; }
class RKLLMInput(Structure):
    _anonymous_ = ("u",)
    _fields_ = [
        ("role", c_char_p),
        ("enable_thinking", c_bool),
        ("input_type", c_int),
        ("u", _InputUnion),
    ]


# ---- 1.3.1: the multimodal input gains an audio part ---------------------------------------


# the unnamed struct type of RKLLMMultiModalInput.audio (1.3.1):
#     { float* audio_embed; size_t n_audio_tokens; size_t n_audio; const char* audio_start;
#       const char* audio_end; const char* audio_content; }
class RKLLMAudioInput(Structure):
    _fields_ = [
        ("audio_embed", POINTER(c_float)),
        ("n_audio_tokens", c_size_t),
        ("n_audio", c_size_t),
        ("audio_start", c_char_p),
        ("audio_end", c_char_p),
        ("audio_content", c_char_p),
    ]


# struct RKLLMMultiModalInput {                        (1.3.1; 192 bytes)
#     char* prompt; <image struct> image; <video struct> video; <audio struct> audio; }
class RKLLMMultiModalInput131(Structure):
    _fields_ = [
        ("prompt", c_char_p),
        ("image", RKLLMImageInput),
        ("video", RKLLMVideoInput),
        ("audio", RKLLMAudioInput),
    ]


# the anonymous union inside RKLLMInput (1.3.1):
#     union { const char* prompt_input; RKLLMEmbedInput embed_input;
#             RKLLMTokenInput token_input; RKLLMMultiModalInput multimodal_input /* 192 bytes */; }
class _InputUnion131(Union):
    _fields_ = [
        ("prompt_input", c_char_p),
        ("embed_input", RKLLMEmbedInput),
        ("token_input", RKLLMTokenInput),
        ("multimodal_input", RKLLMMultiModalInput131),
    ]


# struct RKLLMInput {                                  (1.3.1; 208 bytes, the union still at 16)
#     const char* role; bool enable_thinking; RKLLMInputType input_type; union { ... }; }
class RKLLMInput131(Structure):
    _anonymous_ = ("u",)
    _fields_ = [
        ("role", c_char_p),
        ("enable_thinking", c_bool),
        ("input_type", c_int),
        ("u", _InputUnion131),
    ]


# struct RKLLMSamplingParam {                          (36 bytes)
#     int32_t top_k; float top_p; float temperature; float repeat_penalty; float frequency_penalty;
#     float presence_penalty; int32_t mirostat; float mirostat_tau; float mirostat_eta; }
class RKLLMSamplingParam(Structure):
    _fields_ = [
        ("top_k", c_int32),
        ("top_p", c_float),
        ("temperature", c_float),
        ("repeat_penalty", c_float),
        ("frequency_penalty", c_float),
        ("presence_penalty", c_float),
        ("mirostat", c_int32),
        ("mirostat_tau", c_float),
        ("mirostat_eta", c_float),
    ]


# struct RKLLMInferParam {                             (40 bytes)
#     RKLLMInferMode mode; RKLLMLoraParam* lora_params; RKLLMPromptCacheParam* prompt_cache_params;
#     RKLLMSamplingParam* sampling_params /* NULL = init values */; int keep_history;
#     int32_t max_new_tokens /* <= 0 = init value */; }
class RKLLMInferParam(Structure):
    _fields_ = [
        ("mode", c_int),
        ("lora_params", POINTER(RKLLMLoraParam)),
        ("prompt_cache_params", POINTER(RKLLMPromptCacheParam)),
        ("sampling_params", POINTER(RKLLMSamplingParam)),
        ("keep_history", c_int),
        ("max_new_tokens", c_int32),
    ]


# int (*LLMResultCallback)(RKLLMResult*, void* userdata, LLMCallState);
ResultCallback: Any = ResultCallbackInt

# int (*LLMTokenizerCallback)(void* userdata, const char* text, int32_t text_len,
#                             int32_t* tokens, int32_t n_tokens_max);   -> token count or < 0
TokenizerCallback: Any = CFUNCTYPE(c_int, c_void_p, c_char_p, c_int32, POINTER(c_int32), c_int32)

# int (*LLMGetEmbedCallback)(void* userdata, int32_t* tokens, uint64_t num_tokens,
#                            void* embed, uint64_t len_bytes);   -> 0 ok
EmbedCallback: Any = CFUNCTYPE(c_int, c_void_p, POINTER(c_int32), c_uint64, c_void_p, c_uint64)


# struct RKLLMCallback {                               (48 bytes)
#     LLMResultCallback result_callback; void* result_userdata;
#     LLMTokenizerCallback tokenizer_callback; void* tokenizer_userdata;
#     LLMGetEmbedCallback embed_callback; void* embed_userdata; }
class RKLLMCallback(Structure):
    _fields_ = [
        ("result_callback", ResultCallback),
        ("result_userdata", c_void_p),
        ("tokenizer_callback", TokenizerCallback),
        ("tokenizer_userdata", c_void_p),
        ("embed_callback", EmbedCallback),
        ("embed_userdata", c_void_p),
    ]


# Where each layout comes from, said in the log line at load (rkllm_library_loaded).
LAYOUT_1_3_0 = "the vendor's 1.3.0 rkllm.h, compiled for sizeof/offsetof (certain)"
LAYOUT_1_3_1 = (
    "second-hand: a third-party binding whose structs were diffed against a layout compiled from "
    "the vendor's 1.3.1 rkllm.h on an aarch64 board; the 1.3.1 header itself was not reachable "
    "(likely, not certain: only RKLLMMultiModalInput/RKLLMInput differ from 1.3.0)"
)


def _spec(version: str, family: str, inp: type[Structure], layout: str) -> AbiSpec:
    return AbiSpec(
        family=family,
        versions=(version,),
        Param=RKLLMParam,
        ExtendParam=RKLLMExtendParam,
        Input=inp,
        InferParam=RKLLMInferParam,
        Result=RKLLMResult,
        result_callback=ResultCallback,
        # rkllm_init's third parameter is RKLLMCallback*.
        functions=functions_1_2_1_plus(RKLLMParam, inp, RKLLMInferParam, POINTER(RKLLMCallback)),
        callback_returns_int=True,
        has_perf=True,
        has_role=True,
        per_run_limits=True,
        Callback=RKLLMCallback,
        SamplingParam=RKLLMSamplingParam,
        layout_source=layout,
    )


SPEC = _spec("1.3.0", "F", RKLLMInput, LAYOUT_1_3_0)
# 1.3.1 differs from 1.3.0 only in RKLLMInput (its multimodal part): own family name, as the prompt
# cache's identity and the status report carry the family.
SPEC_1_3_1 = _spec("1.3.1", "F'", RKLLMInput131, LAYOUT_1_3_1)
