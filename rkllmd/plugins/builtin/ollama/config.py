"""The ``[plugins.ollama]`` table."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rkllmd.plugins.builtin._httpbase import HttpConfig


class Config(HttpConfig):
    port: int = Field(11434, ge=1, le=65535)
    num_ctx: Literal["refuse", "clamp"] = Field(
        "refuse",
        description="a request's num_ctx above the model's context: refused (400), or served with the "
        "model's context (Home Assistant's default is 8192)",
    )
