"""What one generation is asked to do: the request vocabulary every layer shares.

``GenerateInput`` and its parts (``ChatMessage``, ``ToolCall``, ``Sampling``, ``Thinking``) are built by
protocol (from a request), read by the runtimes (and their tool-call code), and carried on the
``Exchange``. Plain frozen data with no imports of rkllmd: it sits below protocol, toolcalls and
runtime alike, so none of them imports another for it; and the worker process, which imports no
pydantic, unpickles it from the pipe.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal


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
    #: encoded images (JPEG, PNG, WebP bytes) a user turn carries (docs/VISION.md)
    images: tuple[bytes, ...] = ()


OptionKind = Literal["integer", "number", "strings"]


@dataclass(frozen=True)
class Option:
    """One sampling option as every layer knows it (``SAMPLING_OPTIONS``, read from ``Sampling``).

    The MQTT request model's field and its checks (protocol/requests.py), the numbers table
    (protocol/numbers.py), the OpenAI and Ollama request mappings (the http and ollama plugins)
    and docs/PROTOCOL.md's field table are all read from here; each runtime names the options it
    honours (its ``SAMPLING`` table). ``kind`` "strings" is a string or a list of strings.
    """

    name: str  # the generate request's field and the ``Sampling`` attribute
    kind: OptionKind
    doc: str  # what it does, for error messages and docs
    example: Any  # a valid value, for docs and for the tests that walk every interface
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    #: its name in an OpenAI request body, and in an Ollama request's ``options``; None: not taken there
    openai: str | None = None
    ollama: str | None = None

    @property
    def bounds(self) -> dict[str, float]:
        """The bounds as pydantic's ``Field`` takes them."""
        out = {"ge": self.ge, "gt": self.gt, "le": self.le}
        return {k: v for k, v in out.items() if v is not None}


def _option(kind: OptionKind, doc: str, example: Any, **kw: Any) -> Any:
    """A ``Sampling`` field (None: the model's configured value) that carries its declaration."""
    default: Any = () if kind == "strings" else None
    return field(default=default, metadata={"option": Option("", kind, doc, example, **kw)})


@dataclass(frozen=True)
class Sampling:
    """Per-request sampling overrides; None (no stop strings) means the model's configured value.

    Each field is one option's declaration: adding a field here adds the option to the MQTT
    request, the OpenAI and Ollama APIs and docs/PROTOCOL.md's table (a test checks each); the
    runtimes that should honour it add it to their ``SAMPLING`` table.
    """

    temperature: float | None = _option(
        "number", "randomness; 0 is greedy", 0.2, ge=0, le=5, openai="temperature", ollama="temperature"
    )
    top_p: float | None = _option(
        "number", "nucleus sampling", 0.5, gt=0, le=1, openai="top_p", ollama="top_p"
    )
    top_k: int | None = _option(
        "integer", "sample from the k likeliest tokens", 7, ge=0, le=100_000, openai="top_k", ollama="top_k"
    )
    repeat_penalty: float | None = _option(
        "number",
        "penalty on repeated tokens",
        1.3,
        ge=0,
        le=10,
        openai="repeat_penalty",
        ollama="repeat_penalty",
    )
    frequency_penalty: float | None = _option(
        "number",
        "penalty by a token's count so far",
        0.4,
        ge=-2,
        le=2,
        openai="frequency_penalty",
        ollama="frequency_penalty",
    )
    presence_penalty: float | None = _option(
        "number",
        "penalty on any token seen so far",
        0.6,
        ge=-2,
        le=2,
        openai="presence_penalty",
        ollama="presence_penalty",
    )
    seed: int | None = _option(
        "integer", "sampling seed", 1234, ge=0, le=2**31 - 1, openai="seed", ollama="seed"
    )
    stop: tuple[str, ...] = _option("strings", "stop strings", ("\n\n",), openai="stop", ollama="stop")

    def value(self, name: str, cfg: Any) -> Any:
        """Option ``name`` for this run: the request's, else the model's configured ``cfg.<name>``
        (None when the model's table has no such key). Runs on the inference thread."""
        mine = getattr(self, name)
        return getattr(cfg, name, None) if mine is None else mine


SAMPLING_OPTIONS: tuple[Option, ...] = tuple(
    replace(f.metadata["option"], name=f.name) for f in fields(Sampling)
)
SAMPLING_BY_NAME: dict[str, Option] = {o.name: o for o in SAMPLING_OPTIONS}


@dataclass(frozen=True)
class Thinking:
    """Whether this run may think aloud, and how the model writes its thought (docs/THINKING.md).

    ``on`` is the request's switch (``think``; off unless asked): the runtimes pass it to the
    model (RKLLMInput.enable_thinking, the GGUF template's ``enable_thinking``). The rest is the
    model's configuration, resolved at admission: the tags around the thought, whether its
    template opens the block in the prompt (DeepSeek-R1-Distill: the output starts inside the
    thought), and the cap on thought (deltas inside the block; None: only ``max_tokens``).
    """

    on: bool = False
    open_tag: str = "<think>"
    close_tag: str = "</think>"
    starts_open: bool = False
    max_tokens: int | None = None


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
    #: the think switch and the model's thought format (rkllmd/thinking.py)
    thinking: Thinking = field(default_factory=Thinking)

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
    def images(self) -> tuple[bytes, ...]:
        """Every image of the conversation, in order (a runtime without vision refuses them)."""
        return tuple(img for m in self.messages for img in m.images)

    @property
    def last_user(self) -> str:
        for m in reversed(self.messages):
            if m.role in ("user", "tool"):
                return m.content
        return ""
