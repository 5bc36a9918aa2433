"""The ``[plugins.ollama]`` table."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rkllmd.plugins.builtin._httpconfig import HttpConfig


class Config(HttpConfig):
    port: int = Field(11434, ge=1, le=65535)
    num_ctx: Literal["clamp", "refuse"] = Field(
        "clamp",
        description="a request's num_ctx above the model's context: served with the model's context "
        "(Home Assistant sends 8192 by default; a prompt that does not fit is still refused), "
        "or refused (400)",
    )
    errors: Literal["auto", "spoken", "ollama"] = Field(
        "auto",
        description="how a failed /api/chat is answered: Ollama's error status (ollama), a 200 answer "
        "whose text says what went wrong in one sentence (spoken), or spoken for the ollama Python "
        "client, which Home Assistant's integration is, and Ollama's errors for every other (auto)",
    )
