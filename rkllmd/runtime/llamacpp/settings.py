"""The ``[models.X]`` table of a model with ``runtime = "llamacpp"``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from rkllmd.config_base import ModelCommon


class LlamaCppModelSettings(ModelCommon):
    runtime: Literal["llamacpp"]
    path: Path | None = Field(None, description=".gguf file; empty = the embedded SmolLM2 demo model")
    n_threads: int | None = Field(None, ge=1)
    seed: int = -1
    mmproj: Path | None = Field(
        None,
        description="the model's multimodal projector (.gguf) for images (docs/VISION.md); without it "
        "images are refused",
    )

    @property
    def takes_images(self) -> bool:
        return self.mmproj is not None
