"""What one generation is asked to do: the request vocabulary every layer shares.

``GenerateInput`` and its parts (``ChatMessage``, ``ToolCall``, ``Sampling``) are built by
protocol (from a request), read by the runtimes (and their tool-call code), and carried on the
``Exchange``. Plain frozen data with no imports of rkllmd: it sits below protocol, toolcalls and
runtime alike, so none of them imports another for it; and the worker process, which imports no
pydantic, unpickles it from the pipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ToolCall:
    """A call the model made in an earlier assistant turn (or this one): ``arguments`` is a JSON object."""

    id: str
    name: str
    arguments: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """OpenAI's shape with ``arguments`` an object: a reply's ``tool_calls``, a chat template's."""
        fn = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": fn}


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation; ``role`` is system, user, assistant or tool.

    An assistant turn may carry the ``tool_calls`` it made; a tool turn the ``tool_call_id`` (and
    function ``name``) it answers. Plain data: it crosses the worker pipe pickled.
    """

    role: str
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Sampling:
    """Per-request sampling overrides; None means the model's configured default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repeat_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerateInput:
    """What one generation is asked to do; ``messages`` ends with the user's turn."""

    messages: tuple[ChatMessage, ...]
    max_tokens: int
    sampling: Sampling = field(default_factory=Sampling)
    #: OpenAI-shaped tool definitions ({"type": "function", "function": {...}}), checked at admission
    tools: tuple[dict[str, Any], ...] = ()
    #: "auto", "none", "required", or "function" (then ``tool_name`` is the one to call)
    tool_choice: str = "auto"
    tool_name: str | None = None
    #: structured output: "json" or a JSON schema object (docs/TOOLS.md)
    format: str | dict[str, Any] | None = None

    @property
    def active_tools(self) -> tuple[dict[str, Any], ...]:
        """The tools the model is offered this run: none with ``tool_choice`` "none"."""
        return () if self.tool_choice == "none" else self.tools

    @property
    def call_required(self) -> bool:
        """Whether this run must end in a tool call (``required`` or a named function)."""
        return bool(self.active_tools) and self.tool_choice in ("required", "function")

    @property
    def system(self) -> str | None:
        sys = [m.content for m in self.messages if m.role == "system"]
        return "\n".join(sys) if sys else None

    @property
    def last_user(self) -> str:
        for m in reversed(self.messages):
            if m.role in ("user", "tool"):
                return m.content
        return ""
