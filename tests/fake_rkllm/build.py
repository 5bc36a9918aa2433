"""Build the RKLLM test double and probe the C layouts of its header. Importing does nothing.

``build_fake(abi, out_dir, version)`` compiles fake_rkllm.c with gcc into ``out_dir`` and returns
the .so path; the file name carries a hash of the sources and options, so repeated calls reuse it.
``probe_layout(abi, out_dir)`` compiles a tiny C program against rkllm_double.h that prints the
size, alignment and every field's offset and size of each struct, and returns them parsed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.cdouble import build_shared, run_probe, struct_lines

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "fake_rkllm.c"
HEADER = HERE / "rkllm_double.h"
CFLAGS = ["-std=c11", "-O1", "-g", "-fPIC", "-Wall", "-Wextra", "-Werror", "-pthread"]

# ABI selector -> (value of the RKLLM_ABI macro, release whose version string is embedded by default)
_ABIS: dict[str, tuple[str, str]] = {
    "120": ("120", "1.2.0"),
    "1.2.0": ("120", "1.2.0"),
    "12": ("12", "1.2.3"),
    "1.2": ("12", "1.2.3"),
    "13": ("13", "1.3.0"),
    "1.3": ("13", "1.3.0"),
    "131": ("131", "1.3.1"),
    "1.3.1": ("131", "1.3.1"),
}

_COMMON: dict[str, list[str]] = {
    "RKLLMLoraAdapter": ["lora_adapter_path", "lora_adapter_name", "scale"],
    "RKLLMEmbedInput": ["embed", "n_tokens"],
    "RKLLMTokenInput": ["input_ids", "n_tokens"],
    "RKLLMLoraParam": ["lora_adapter_name"],
    "RKLLMPromptCacheParam": ["save_prompt_cache", "prompt_cache_path"],
    "RKLLMResultLastHiddenLayer": ["hidden_states", "embd_size", "num_tokens"],
    "RKLLMResultLogits": ["logits", "vocab_size", "num_tokens"],
}
_PARAM_HEAD = [
    "model_path",
    "max_context_len",
    "max_new_tokens",
    "top_k",
    "n_keep",
    "top_p",
    "temperature",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "skip_special_token",
]
_UNION = ["prompt_input", "embed_input", "token_input", "multimodal_input"]
_EXT_12 = [
    "base_domain_id",
    "embed_flash",
    "enabled_cpus_num",
    "enabled_cpus_mask",
    "n_batch",
    "use_cross_attn",
    "reserved",
]
_PERF = ["prefill_time_ms", "prefill_tokens", "generate_time_ms", "generate_tokens", "memory_usage_mb"]
_CROSS = ["encoder_k_cache", "encoder_v_cache", "encoder_mask", "encoder_pos", "num_tokens"]

# Every struct of each ABI with its fields in declaration order (anonymous union members included).
STRUCT_FIELDS: dict[str, dict[str, list[str]]] = {
    "120": {
        **_COMMON,
        "RKLLMExtendParam": [
            "base_domain_id",
            "embed_flash",
            "enabled_cpus_num",
            "enabled_cpus_mask",
            "reserved",
        ],
        "RKLLMParam": [*_PARAM_HEAD, "is_async", "img_start", "img_end", "img_content", "extend_param"],
        "RKLLMMultiModelInput": ["prompt", "image_embed", "n_image_tokens"],
        "RKLLMInput": ["input_type", *_UNION],
        "RKLLMInferParam": ["mode", "lora_params", "prompt_cache_params", "keep_history"],
        "RKLLMResult": ["text", "token_id", "last_hidden_layer", "logits"],
    },
    "12": {
        **_COMMON,
        "RKLLMExtendParam": _EXT_12,
        "RKLLMParam": [*_PARAM_HEAD, "is_async", "img_start", "img_end", "img_content", "extend_param"],
        "RKLLMMultiModalInput": [
            "prompt",
            "image_embed",
            "n_image_tokens",
            "n_image",
            "image_width",
            "image_height",
        ],
        "RKLLMInput": ["role", "enable_thinking", "input_type", *_UNION],
        "RKLLMCrossAttnParam": _CROSS,
        "RKLLMInferParam": ["mode", "lora_params", "prompt_cache_params", "keep_history"],
        "RKLLMPerfStat": _PERF,
        "RKLLMResult": ["text", "token_id", "last_hidden_layer", "logits", "perf"],
    },
    "13": {
        **_COMMON,
        "RKLLMExtendParam": _EXT_12,
        "RKLLMParam": [*_PARAM_HEAD, "ignore_eos_token", "is_async", "extend_param"],
        "RKLLMImageInput": [
            "image_embed",
            "n_image_tokens",
            "n_image",
            "image_start",
            "image_end",
            "image_content",
            "image_width",
            "image_height",
        ],
        "RKLLMVideoInput": [
            "video_embed",
            "n_frame_tokens",
            "n_frame_per_video",
            "n_video",
            "video_start",
            "video_end",
            "video_content",
            "frame_width",
            "frame_height",
        ],
        "RKLLMMultiModalInput": ["prompt", "image", "video"],
        "RKLLMInput": ["role", "enable_thinking", "input_type", *_UNION],
        "RKLLMCrossAttnParam": _CROSS,
        "RKLLMSamplingParam": [
            "top_k",
            "top_p",
            "temperature",
            "repeat_penalty",
            "frequency_penalty",
            "presence_penalty",
            "mirostat",
            "mirostat_tau",
            "mirostat_eta",
        ],
        "RKLLMInferParam": [
            "mode",
            "lora_params",
            "prompt_cache_params",
            "sampling_params",
            "keep_history",
            "max_new_tokens",
        ],
        "RKLLMPerfStat": _PERF,
        "RKLLMResult": ["text", "token_id", "last_hidden_layer", "logits", "perf"],
        "RKLLMCallback": [
            "result_callback",
            "result_userdata",
            "tokenizer_callback",
            "tokenizer_userdata",
            "embed_callback",
            "embed_userdata",
        ],
    },
}

# 1.3.1: 1.3.0 plus the audio part of the multimodal input.
STRUCT_FIELDS["131"] = {
    **STRUCT_FIELDS["13"],
    "RKLLMAudioInput": [
        "audio_embed",
        "n_audio_tokens",
        "n_audio",
        "audio_start",
        "audio_end",
        "audio_content",
    ],
    "RKLLMMultiModalInput": ["prompt", "image", "video", "audio"],
}

ENUMS = [
    "RKLLM_RUN_NORMAL",
    "RKLLM_RUN_WAITING",
    "RKLLM_RUN_FINISH",
    "RKLLM_RUN_ERROR",
    "RKLLM_INPUT_PROMPT",
    "RKLLM_INPUT_TOKEN",
    "RKLLM_INPUT_EMBED",
    "RKLLM_INPUT_MULTIMODAL",
    "RKLLM_INFER_GENERATE",
    "RKLLM_INFER_GET_LAST_HIDDEN_LAYER",
    "RKLLM_INFER_GET_LOGITS",
]


# Functions a build of the double can leave out (-DFAKE_RKLLM_OMIT_<name>); set_function_tools and
# set_cross_attn_params exist only in ABIs "12", "13" and "131".
OMITTABLE = (
    "rkllm_load_lora",
    "rkllm_set_function_tools",
    "rkllm_set_cross_attn_params",
    "rkllm_load_prompt_cache",
    "rkllm_release_prompt_cache",
)


def abi_macro(abi: str) -> str:
    """The RKLLM_ABI macro value ("120", "12", "13" or "131") for an ABI selector such as "1.3"."""
    try:
        return _ABIS[abi][0]
    except KeyError:
        raise ValueError(f"unknown ABI {abi!r}; use one of {sorted(_ABIS)}") from None


def build_fake(
    abi: str,
    out_dir: Path,
    version: str | None = None,
    *,
    omit: Sequence[str] = (),
    sdk_line: bool = True,
    android: bool = False,
) -> Path:
    """Compile the double for ``abi`` ("120"/"1.2.0", "12"/"1.2", "13"/"1.3", "131"/"1.3.1"); return the .so.

    ``version`` is the release in the embedded ``RKLLM SDK (version: X | …)`` line, the vendor's
    only literal form of it (default: the newest release of that ABI family); ``sdk_line=False``
    leaves that line out. ``omit`` names functions the build does not export (one of
    ``OMITTABLE``); ``android`` adds the NDK's Android ident note. Cached in ``out_dir`` by a hash
    of sources and options.
    """
    macro = abi_macro(abi)
    version = _ABIS[abi][1] if version is None else version
    if not version or any(c in version for c in '"\\\n'):
        raise ValueError(f"bad version string {version!r}")
    unknown = sorted(set(omit) - set(OMITTABLE))
    if unknown:
        raise ValueError(f"cannot omit {unknown}; omittable: {list(OMITTABLE)}")
    defines = [f"-DRKLLM_ABI={macro}", f'-DFAKE_RKLLM_VERSION="{version}"']
    defines += [f"-DFAKE_RKLLM_OMIT_{name}" for name in sorted(set(omit))]
    defines += [] if sdk_line else ["-DFAKE_RKLLM_NO_SDK_LINE"]
    defines += ["-DFAKE_RKLLM_ANDROID"] if android else []
    return build_shared(SOURCE, HEADER, CFLAGS, defines, Path(out_dir) / f"librkllmrt_fake_{macro}_{version}")


def probe_layout(abi: str, out_dir: Path) -> dict[str, dict[str, Any]]:
    """sizeof/alignof/offsetof of every struct field of rkllm_double.h for ``abi``, from gcc.

    Returns ``{struct: {"size", "align", "fields": {name: offset}, "field_sizes": {name: size}}}``
    plus ``{"enums": {name: value}}``.
    """
    macro = abi_macro(abi)
    body = struct_lines(STRUCT_FIELDS[macro])
    body += [f'printf("ENUM {e} %d %zu\\n", (int){e}, sizeof({e}));' for e in ENUMS]
    return run_probe(HEADER, body, Path(out_dir) / f"layout_probe_{macro}", [f"-DRKLLM_ABI={macro}"])
