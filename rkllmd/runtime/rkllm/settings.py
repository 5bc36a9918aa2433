"""The ``[models.X]`` table of a model with ``runtime = "rkllm"``, and the ``[rkllm]`` table."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from rkllmd.config_base import ModelCommon, Strict
from rkllmd.vision.families import family

DEFAULT_PROMPT_CACHE_DIR = Path("/var/cache/rkllmd/prompt-cache")


def _absolute(v: Path | None) -> Path | None:
    if v is not None and not v.is_absolute():
        raise ValueError(f"prompt_cache_dir must be an absolute path, not {str(v)!r}")
    return v


class ChatTemplate(Strict):
    """RKLLM's own three-part template (rkllm_set_chat_template); {system} is replaced."""

    system: str = ""
    prefix: str = ""
    postfix: str = ""
    no_thinking: str = Field(
        "",
        description="appended to postfix when a run does not think (Qwen3: '<think>\\n\\n</think>\\n\\n'); "
        "under this template the runtime ignores enable_thinking",
    )


class RkllmModelSettings(ModelCommon):
    runtime: Literal["rkllm"]
    path: Path
    library: Path | None = Field(
        None, description="librkllmrt.so; default [rkllm].library, then the search path"
    )
    runtime_version: str = Field(
        "auto",
        description="auto (detect), or a pin that overrides detection at your own risk: "
        "1.2.0, 1.2.1b1, 1.2.1, 1.2.2, 1.2.3, 1.3.0, 1.3.1",
    )
    tokenizer: Path | None = Field(None, description="tokenizer.json for prompt token counts")
    keep_history: bool = False
    n_keep: int = -1
    base_domain_id: int = 0
    embed_flash: bool = True
    enabled_cpus: list[int] = Field(default_factory=lambda: [4, 5, 6, 7])
    skip_special_token: bool = True
    chat_template: ChatTemplate | None = None
    prompt_cache: bool = Field(
        False,
        description="save the prefill of the fixed prefix (system prompt, template, tools) to a file "
        "on first use and load it when the model loads (docs/RKLLM.md#prompt-cache)",
    )
    prompt_cache_dir: Path | None = Field(None, description="default [rkllm].prompt_cache_dir")
    vision_encoder: Path | None = Field(
        None,
        description="the vision encoder (.rknn) of a vision-language model; without it images are refused",
    )
    vision_family: str = Field(
        "qwen2-vl", description="image tags, pad colour and mean/std of the model family (docs/VISION.md)"
    )
    vision_library: Path | None = Field(None, description="librknnrt.so; default the search path")
    vision_core_mask: int | None = Field(
        None, ge=0, le=7, description="NPU cores for the encoder (7: all three)"
    )

    _dir_absolute = field_validator("prompt_cache_dir")(_absolute)

    @field_validator("vision_family")
    @classmethod
    def _known_family(cls, v: str) -> str:
        return family(v).name  # ValueError naming the known families

    @property
    def takes_images(self) -> bool:
        return self.vision_encoder is not None


class RkllmSettings(Strict):
    library: Path | None = None
    log_level: int | None = Field(None, ge=0, le=2, description="sets RKLLM_LOG_LEVEL for the runtime")
    prompt_cache_dir: Path = Field(
        DEFAULT_PROMPT_CACHE_DIR, description="the only folder prompt-cache files are written to"
    )
    prompt_cache_keep: int = Field(4, ge=1, le=100, description="cache files kept per model (newest used)")

    _dir_absolute = field_validator("prompt_cache_dir")(_absolute)
