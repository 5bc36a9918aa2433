"""The request payload models: what each command accepts, and the checks on tools, tool_choice,
format and tool turns that pydantic's field types cannot say on their own.

Pure functions and data only: no network, no threads. Errors carry their field's path so that
``rkllmd.protocol.payload.validate`` can report them as the client wrote them; the models know
nothing of topics or of the command table, which builds on them (commands.py).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rkllmd.generation import (
    SAMPLING_OPTIONS,
    ChatMessage,
    GenerateInput,
    Option,
    OptionKind,
    Sampling,
    Thinking,
    ToolCall,
)
from rkllmd.protocol import imagein, shapes
from rkllmd.protocol.address import ID_RE, check_publish_topic
from rkllmd.protocol.numbers import GENERATE_NUMBERS, NotANumber, as_number, loads
from rkllmd.toolcalls import check_schema, new_call_id
from rkllmd.vision import history


class Req(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | None = None
    transaction: Any = None
    reply_to: str | None = None

    @field_validator("id")
    @classmethod
    def _id_ok(cls, v: str | None) -> str | None:
        if v is not None and not ID_RE.match(v):
            raise ValueError("id must be 1-64 characters of [A-Za-z0-9_.:-]")
        return v

    @field_validator("reply_to")
    @classmethod
    def _reply_to_ok(cls, v: str | None) -> str | None:
        if v is not None:
            check_publish_topic(v, "reply_to")
        return v


def _whole_or_none(v: Any) -> Any:
    """An optional integer field read as every interface reads numbers (a whole float is one)."""
    try:
        return None if v is None else as_number(v, "integer")
    except NotANumber as exc:
        raise PydanticCustomError("number_type", str(exc)) from None


def _no_nul(v: Any) -> Any:
    """Text for the runtime must not hold NUL: C reads a string only up to the first one."""
    texts = [v] if isinstance(v, str) else v if isinstance(v, list) else []
    if any("\x00" in t for t in texts if isinstance(t, str)):
        raise PydanticCustomError("nul_character", "must not contain a NUL character (\\u0000)")
    return v


def _located(message: str) -> PydanticCustomError:
    """An error whose message already names its field (``tools[1]: ...``): reported as it is."""
    return PydanticCustomError("located", message)


_THINK_LEVELS = ("low", "medium", "high")


def _check_think(v: Any) -> Any:
    """One message for a bad ``think``, not the union's two (a bool's and a level's): a string
    outside the levels is a wrong value (bad_request), any other JSON type a wrong type."""
    if isinstance(v, bool) or v in _THINK_LEVELS:
        return v
    what = "true, false, 'low', 'medium' or 'high'"
    if isinstance(v, str):
        raise _located(f"think: must be {what} (got {v!r:.40})")
    raise shapes.wrong_shape(what, v)


class FunctionCallIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1)
    # OpenAI sends a JSON string, Ollama an object; both become an object.
    arguments: Annotated[dict[str, Any] | str, shapes.ARGUMENTS] = Field(default_factory=dict)

    @field_validator("arguments")
    @classmethod
    def _object(cls, v: dict[str, Any] | str) -> dict[str, Any] | str:
        if isinstance(v, str):
            try:
                v = loads(v) if v.strip() else {}
            except (ValueError, RecursionError):
                raise ValueError("must be a JSON object (or a string holding one)") from None
            if not isinstance(v, dict):
                raise ValueError("must be a JSON object (or a string holding one)")
        return v


class ToolCallIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCallIn
    index: int | None = None  # OpenAI clients echo the stream index back; not used


class ImagePathIn(BaseModel):
    """An image file under the configured ``[images] folder``, for a sender that has it on disk."""

    model_config = ConfigDict(extra="forbid", strict=True)

    path: str


# An image: its bytes base64-encoded or as a data: URI (a string), or {"path": …} (docs/PROTOCOL.md,
# docs/VISION.md).
ImageIn = Annotated[str | ImagePathIn, imagein.CHECK_ITEM]


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCallIn] | None = Field(None, max_length=64)
    tool_call_id: str | None = None
    name: str | None = None
    images: list[ImageIn] | None = Field(None, max_length=16)
    # An earlier reply's data.thinking sent back with its turn, as Home Assistant sends Ollama's:
    # accepted and dropped, never prefilled again (docs/THINKING.md, "Thought in the history").
    thinking: str | None = None

    _content_ok = field_validator("content")(_no_nul)

    @model_validator(mode="after")
    def _has_content(self) -> MessageIn:
        # Only an assistant turn that called tools may come without text.
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required")
        if self.images and self.role != "user":
            raise ValueError("images go on a user message")
        if self.thinking is not None and self.role != "assistant":
            raise ValueError("thinking goes on an assistant message")
        return self


def _check_tools(v: Any) -> Any:
    """tools: a list of OpenAI-shaped function definitions, with distinct names."""
    if v is None:
        return v
    if not isinstance(v, list):
        raise _located('tools: must be a list of {"type": "function", "function": {...}}')
    if len(v) > 128:
        raise _located("tools: at most 128 tools")
    names: set[str] = set()
    for i, t in enumerate(v):
        fn = t.get("function") if isinstance(t, dict) else None
        if not (isinstance(t, dict) and t.get("type", "function") == "function" and isinstance(fn, dict)):
            raise _located(f'tools[{i}]: must be {{"type": "function", "function": {{...}}}}')
        extra = set(t) - {"type", "function"}
        if extra:
            raise _located(f"tools[{i}]: unknown field {sorted(extra)[0]!r}")
        name = fn.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", name):
            raise _located(f"tools[{i}].function.name: must be 1-64 characters of [A-Za-z0-9_.:-]")
        if name in names:
            raise _located(f"tools[{i}].function.name: {name!r} is given twice")
        names.add(name)
        if not isinstance(fn.get("description", ""), str):
            raise _located(f"tools[{i}].function.description: must be a string")
        extra = set(fn) - {"name", "description", "parameters", "strict"}
        if extra:
            raise _located(f"tools[{i}].function: unknown field {sorted(extra)[0]!r}")
        if fn.get("parameters") is not None:
            try:
                check_schema(fn["parameters"], f"tools[{i}].function.parameters")
            except ValueError as exc:
                raise _located(str(exc)) from None
    return v


def _check_tool_choice(v: Any) -> Any:
    if v is None or v in ("auto", "none", "required"):
        return v
    fn = v.get("function") if isinstance(v, dict) else None
    named = isinstance(fn, dict) and isinstance(fn.get("name"), str) and bool(fn["name"])
    if isinstance(v, dict) and v.get("type") == "function" and named:
        return v
    raise _located(
        'tool_choice: must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}'
    )


def _check_format(v: Any) -> Any:
    if v is None or v == "json":
        return v
    if not isinstance(v, dict):
        raise _located('format: must be "json" or a JSON schema object')
    try:
        check_schema(v, "format")
    except ValueError as exc:
        raise _located(str(exc)) from None
    return v


_STRINGS = tuple(o.name for o in SAMPLING_OPTIONS if o.kind == "strings")
_OPTION_TYPES: dict[OptionKind, Any] = {
    "integer": int,
    "number": float,
    "strings": Annotated[str | list[str], shapes.STRINGS],
}

# The sampling options' fields, one per rkllmd.generation.SAMPLING_OPTIONS entry (None: the model's
# value), with their bounds. mypy sees the plain base; the options are read by name (to_input).
if TYPE_CHECKING:
    _WithOptions = Req
else:
    _WithOptions = create_model(
        "_WithOptions",
        __base__=Req,
        __module__=__name__,
        **{o.name: (_OPTION_TYPES[o.kind] | None, Field(None, **o.bounds)) for o in SAMPLING_OPTIONS},
    )


class GenerateRequest(_WithOptions):
    prompt: str | None = None
    messages: list[MessageIn] | None = Field(None, max_length=1000)
    system: str | None = None
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    stream: StrictBool = True
    sentences: StrictBool = False  # whole sentences on <base>/stream/<id>/sentences (the dispatcher's)
    tools: Any = None
    tool_choice: Any = None
    format: Any = None
    images: list[ImageIn] | None = Field(None, max_length=16)  # with ``prompt``; messages carry their own
    # a thinking model may think aloud (docs/THINKING.md); Ollama's effort levels mean true
    think: StrictBool | Literal["low", "medium", "high"] = False
    max_thinking_tokens: int | None = Field(None, ge=1)

    _text_ok = field_validator("prompt", "system", *_STRINGS)(_no_nul)
    _think_ok = field_validator("think", mode="before")(_check_think)
    _tools_ok = field_validator("tools")(_check_tools)
    _tool_choice_ok = field_validator("tool_choice")(_check_tool_choice)
    _format_ok = field_validator("format")(_check_format)

    @field_validator(*GENERATE_NUMBERS, mode="before")
    @classmethod
    def _number(cls, v: Any, info: ValidationInfo) -> Any:
        # JSON has one number type: 1 is a valid temperature and 40.0 a valid top_k (numbers.py).
        if v is None:
            return v
        assert info.field_name is not None
        try:
            return as_number(v, GENERATE_NUMBERS[info.field_name])
        except NotANumber as exc:
            raise PydanticCustomError("number_type", str(exc)) from None

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateRequest:
        if self.prompt is not None and self.messages is not None:
            raise ValueError("give either prompt or messages, not both")
        if self.prompt is None and self.messages is None:
            nulls = " and ".join(f for f in ("prompt", "messages") if f in self.model_fields_set)
            said = f" ({nulls} {'are' if ' and ' in nulls else 'is'} null)" if nulls else ""
            raise EmptyPromptValue(f"a generate request needs a prompt or messages{said}")
        if self.prompt is not None and not self.prompt.strip():
            raise EmptyPromptValue("the prompt is empty")
        if self.images and self.messages is not None:
            raise _located("images: with messages, images go on the user message (messages[i].images)")
        if self.messages is not None and not any(
            m.role in ("user", "tool") and (m.content or "").strip() for m in self.messages
        ):
            raise EmptyPromptValue("messages contain no non-empty user message")
        self._check_tool_turns()
        names = [t["function"]["name"] for t in self.tools or []]
        choice = self.tool_choice
        if isinstance(choice, dict) and choice["function"]["name"] not in names:
            raise _located(f"tool_choice: no tool named {choice['function']['name']!r} in tools")
        if choice == "required" and not names:
            raise _located('tool_choice: "required" needs tools')
        return self

    def _check_tool_turns(self) -> None:
        """Every tool result answers a call an earlier assistant turn made."""
        seen: set[str] = set()
        any_call = False
        for i, m in enumerate(self.messages or []):
            if m.role == "assistant" and m.tool_calls:
                any_call = True
                seen.update(c.id for c in m.tool_calls if c.id)
            if m.role != "tool":
                continue
            if m.tool_call_id is not None and m.tool_call_id not in seen:
                raise _located(f"messages[{i}].tool_call_id {m.tool_call_id!r} matches no earlier tool call")
            if m.tool_call_id is None and not any_call:
                raise _located(f"messages[{i}]: a tool result, but no earlier assistant turn has tool_calls")

    def to_input(
        self,
        max_tokens: int,
        *,
        image_folder: Path | None = None,
        max_image_bytes: int | None = None,
        max_images: int = 16,
        dropped: list[str] | None = None,
    ) -> GenerateInput:
        """The runtime's input; images are decoded here (BadImage / ImageTooLarge naming the field).

        The current turn's images all go (the caller refused more than ``max_images``); earlier
        turns' images fill the rest of ``max_images``, newest first, and the ones left out or that
        cannot be taken become a text marker (rkllmd.vision.history), each described in ``dropped``.
        """
        msgs: list[ChatMessage] = []
        if self.system:
            msgs.append(ChatMessage("system", self.system))

        if self.messages is None:
            assert self.prompt is not None
            imgs = imagein.read(self.images, "images", image_folder, max_image_bytes)
            content = history.place(self.prompt, [True] * len(imgs), strict=True) if imgs else self.prompt
            msgs.append(ChatMessage("user", content, images=imgs))
        else:
            placed = imagein.conversation(self.messages, image_folder, max_image_bytes, max_images, dropped)
            msgs.extend(_chat_message(m, *p) for m, p in zip(self.messages, placed, strict=True))
        return GenerateInput(
            messages=tuple(msgs),
            max_tokens=max_tokens,
            sampling=Sampling(**{o.name: self._option(o) for o in SAMPLING_OPTIONS}),
            tools=tuple(self.tools or ()),
            tool_choice="function" if isinstance(self.tool_choice, dict) else self.tool_choice or "auto",
            tool_name=self.tool_choice["function"]["name"] if isinstance(self.tool_choice, dict) else None,
            format=self.format,
            thinking=Thinking(on=self.think is not False, max_tokens=self.max_thinking_tokens),
        )

    def _option(self, option: Option) -> Any:
        value = getattr(self, option.name)
        if option.kind == "strings":  # one string or a list; none given is no strings
            return (value,) if isinstance(value, str) else tuple(value or ())
        return value


def _chat_message(m: MessageIn, content: str, images: tuple[bytes, ...]) -> ChatMessage:
    calls = tuple(
        ToolCall(c.id or new_call_id(), c.function.name, dict(c.function.arguments))  # type: ignore[arg-type]
        for c in m.tool_calls or ()
    )
    return ChatMessage(m.role, content, calls, m.tool_call_id, m.name, images)


class EmptyPromptValue(ValueError):
    """Raised inside validation so the error maps to the empty_prompt code."""


class CancelRequest(Req):
    # ``id`` here names the request to cancel.
    pass


class ModelRequest(Req):
    model: str | None = None


class NoArgsRequest(Req):
    pass


def _texts(v: Any, *, objects: bool = False) -> Any:
    """A string or a list of strings (``objects``: a list item may be ``{"text": ...}``, as Cohere
    and Jina take documents); a wrong type names the first item that is one."""
    if isinstance(v, str):
        return _no_nul(v)
    if not isinstance(v, list):
        raise PydanticCustomError("input_type", "must be a string or a list of strings")
    out = []
    for i, item in enumerate(v):
        if objects and isinstance(item, dict) and set(item) == {"text"}:
            item = item["text"]
        if not isinstance(item, str):
            what = 'a string or {"text": string}' if objects else "a string"
            raise PydanticCustomError("input_type", f"[{i}] must be {what}, not {type(item).__name__}")
        out.append(item)
    return _no_nul(out)


class EmbedRequest(Req):
    """``embed``: one text or a list of texts to turn into vectors (docs/EMBEDDINGS.md)."""

    model: str | None = None
    input: Any = None
    dimensions: int | None = Field(None, ge=1)
    encoding: Literal["float", "base64"] = "float"
    truncate: bool = False  # cut a text longer than the context to fit (Ollama's default), else refuse

    @field_validator("input")
    @classmethod
    def _input_ok(cls, v: Any) -> Any:
        return None if v is None else _texts(v)

    _whole = field_validator("dimensions", mode="before")(_whole_or_none)


class RerankRequest(Req):
    """``rerank``: documents scored for their relevance to a query (docs/EMBEDDINGS.md)."""

    model: str | None = None
    query: str | None = None
    documents: Any = None
    top_n: int | None = Field(None, ge=1)
    return_documents: StrictBool = False
    instruction: str | None = None

    _text_ok = field_validator("query", "instruction")(_no_nul)

    @field_validator("documents")
    @classmethod
    def _documents_ok(cls, v: Any) -> Any:
        if v is None:
            return v
        if isinstance(v, str):
            raise PydanticCustomError("input_type", "must be a list of strings")
        return _texts(v, objects=True)

    _whole = field_validator("top_n", mode="before")(_whole_or_none)
