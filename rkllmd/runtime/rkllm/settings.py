"""The ``[models.X]`` table of a model with ``runtime = "rkllm"``, and the ``[rkllm]`` table."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from rkllmd.config_base import ModelCommon, Strict


class ChatTemplate(Strict):
    """RKLLM's own three-part template (rkllm_set_chat_template); {system} is replaced."""

    system: str = ""
    prefix: str = ""
    postfix: str = ""


class RkllmModelSettings(ModelCommon):
    runtime: Literal["rkllm"]
    path: Path
    library: Path | None = Field(
        None, description="librkllmrt.so; default [rkllm].library, then the search path"
    )
    runtime_version: str = Field(
        "auto",
        description="auto (detect), or a pin that overrides detection at your own risk: "
        "1.2.0, 1.2.1b1, 1.2.1, 1.2.2, 1.2.3, 1.3.0",
    )
    tokenizer: Path | None = Field(None, description="tokenizer.json for prompt token counts")
    keep_history: bool = False
    n_keep: int = -1
    base_domain_id: int = 0
    embed_flash: bool = True
    enabled_cpus: list[int] = Field(default_factory=lambda: [4, 5, 6, 7])
    skip_special_token: bool = True
    chat_template: ChatTemplate | None = None


class RkllmSettings(Strict):
    library: Path | None = None
    log_level: int | None = Field(None, ge=0, le=2, description="sets RKLLM_LOG_LEVEL for the runtime")
