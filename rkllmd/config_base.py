"""What every configuration table is made of, and the keys every ``[models.X]`` table shares.

Both ``rkllmd.settings`` (the whole configuration) and each runtime's own settings module build
on these, so a runtime package never needs to import the configuration it is part of.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rkllmd import toolcalls
from rkllmd.embedding import QWEN3_RERANK_INSTRUCTION, QWEN3_RERANK_TEMPLATE


class Strict(BaseModel):
    """A table that rejects unknown keys and whose values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelCommon(Strict):
    """The keys of a ``[models.X]`` table whatever its ``runtime``; each runtime adds its own.

    ``runtime`` names the table's runtime; each runtime's model narrows it to its own name, which
    is what tells the tables apart when the configuration is read.
    """

    description: str = ""
    max_context_len: int = Field(4096, ge=32)
    max_new_tokens: int | None = Field(None, ge=1, description="per-model cap; default limits.max_tokens")
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    top_k: int = Field(40, ge=0)
    repeat_penalty: float = Field(1.1, ge=0)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    system_prompt: str | None = None
    tool_format: str = Field(
        "auto",
        description='how the model writes tool calls: "auto" (from its template or name) or a format name',
    )
    # A thinking model's thought (docs/THINKING.md): its tags, whether its template opens the
    # block in the prompt (DeepSeek-R1-Distill), and how much thought a run may have.
    thinking_tags: tuple[str, str] = Field(
        ("<think>", "</think>"), description="the tags around a thinking model's thought"
    )
    thinking_starts_open: bool = Field(
        False, description="the model's template opens the thought block itself (DeepSeek-R1-Distill)"
    )
    max_thinking_tokens: int | None = Field(
        None, ge=1, description="thought deltas a run may have before it is stopped; default no cap"
    )
    thinks: bool | None = Field(
        None,
        description="the model can think (Ollama's /api/show lists it); default: from its settings "
        "and its family's name (docs/THINKING.md)",
    )
    max_images: int = Field(4, ge=1, le=16, description="images one request may carry (a vision model)")
    runtime: str
    # What the model serves (docs/EMBEDDINGS.md): a request of another kind is refused.
    kind: Literal["chat", "embedding", "rerank"] = "chat"
    pooling: Literal["last", "mean"] = Field(
        "last", description="embedding: the last token's hidden state, or the mean of every token's"
    )
    matryoshka: bool = Field(
        False, description="embedding: trained for shorter vectors (a request's dimensions truncates)"
    )
    input_template: str = Field(
        "{text}", description='embedding: each input as the model reads it, e.g. "{text}<|endoftext|>"'
    )
    rerank_template: str = Field(
        QWEN3_RERANK_TEMPLATE, description="rerank: the text scored, with {instruction} {query} {document}"
    )
    rerank_instruction: str = QWEN3_RERANK_INSTRUCTION
    rerank_tokens: tuple[str, str] = Field(
        ("yes", "no"), description="rerank: the answer tokens whose logits make the score"
    )
    rerank_token_ids: tuple[int, int] | None = Field(
        None,
        description="rerank: their token ids, when the runtime cannot look them up (RKLLM without tokenizer)",
    )

    @model_validator(mode="after")
    def _templates(self) -> ModelCommon:
        if "{text}" not in self.input_template:
            raise ValueError("input_template must contain {text}")
        for slot in ("{query}", "{document}"):
            if slot not in self.rerank_template:
                raise ValueError(f"rerank_template must contain {slot}")
        return self

    @property
    def takes_images(self) -> bool:
        """Whether the table configures an image encoder (admission refuses images otherwise);
        each runtime's table says which key that is (docs/VISION.md)."""
        return False

    @field_validator("tool_format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v not in toolcalls.names():
            raise ValueError(f"unknown tool format {v!r}; one of: {', '.join(toolcalls.names())}")
        return v

    @field_validator("thinking_tags")
    @classmethod
    def _tags(cls, v: tuple[str, str]) -> tuple[str, str]:
        if not v[0].strip() or not v[1].strip() or v[0] == v[1]:
            raise ValueError("thinking_tags must be two different non-blank tags: ['<think>', '</think>']")
        return v
