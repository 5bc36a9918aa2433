"""The MQTT protocol: topic names, the command table, request parsing, every reply body.

Pure functions and data only: no network, no threads. docs/PROTOCOL.md describes the same
thing for users; keep the two in step.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from rkllmd.errors import (
    BadJson,
    EmptyPrompt,
    PayloadTooLarge,
    RequestError,
    UnknownCommand,
    WrongType,
)
from rkllmd.runtime.base import ChatMessage, GenerateInput, Sampling, ToolCall
from rkllmd.toolcalls import check_schema, new_call_id

ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
MAX_JSON_DEPTH = 32
UTF8_BOM = b"\xef\xbb\xbf"
# A payload refused before it validates (too large, a lone surrogate, invalid UTF-8, ...) is still
# read for its reply address when it is at most this many times limits.max_payload_bytes.
ADDRESS_READ_FACTOR = 4
ADDRESS_FIELDS = ("id", "reply_to", "transaction")


@dataclass(frozen=True)
class Topics:
    """Every topic rkllmd publishes or subscribes to, derived from the base topic."""

    base: str

    def request(self, command: str) -> str:
        return f"{self.base}/request/{command}"

    def response(self, command: str) -> str:
        return f"{self.base}/response/{command}"

    @property
    def request_wildcard(self) -> str:
        return f"{self.base}/request/#"

    def stream(self, request_id: str) -> str:
        return f"{self.base}/stream/{request_id}"

    def stream_text(self, request_id: str) -> str:
        return f"{self.base}/stream/{request_id}/text"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def info(self) -> str:
        return f"{self.base}/info"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    def parse_request_topic(self, topic: str) -> tuple[str, str | None]:
        """Split ``<base>/request/<command>[/<model>]`` into (command, model); raise UnknownCommand."""
        prefix = f"{self.base}/request/"
        rest = topic[len(prefix) :] if topic.startswith(prefix) else topic
        parts = rest.split("/")
        command = parts[0]
        if command not in COMMANDS:
            raise UnknownCommand(f"unknown command {command!r}; known: {', '.join(COMMANDS)}")
        if len(parts) == 1:
            return command, None
        if command == "generate" and len(parts) == 2 and parts[1]:
            return command, parts[1]
        raise UnknownCommand(f"unknown request topic {topic!r}")


@dataclass(frozen=True)
class Incoming:
    """One MQTT message, copied out of paho on its network thread."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None
    received_at: float = 0.0


@dataclass(frozen=True)
class LocalMessage(Incoming):
    """A request a plugin injects for its own transport (e.g. HTTP): handled like any message on
    its topic, but nothing about it is published over MQTT (no stream chunks, no final reply);
    routers still see its tokens and its final reply. So answers meant for another transport
    neither reach the broker's subscribers nor pile up in the MQTT client while the broker is away.
    """


@dataclass
class Address:
    """Where a request's final reply goes and what it echoes back: the one reply-address type."""

    topic: str
    correlation_data: bytes | None = None
    request_id: str | None = None  # the id the reply carries
    transaction: Any = None
    has_transaction: bool = False
    local: bool = False  # a plugin's LocalMessage: routers only, nothing published over MQTT


# --- request payload models -----------------------------------------------------------------


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


def _no_nul(v: Any) -> Any:
    """Text for the runtime must not hold NUL: C reads a string only up to the first one."""
    texts = [v] if isinstance(v, str) else v if isinstance(v, list) else []
    if any("\x00" in t for t in texts if isinstance(t, str)):
        raise PydanticCustomError("nul_character", "must not contain a NUL character (\\u0000)")
    return v


def _located(message: str) -> PydanticCustomError:
    """An error whose message already names its field (``tools[1]: ...``): reported as it is."""
    return PydanticCustomError("located", message)


class FunctionCallIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1)
    # OpenAI sends a JSON string, Ollama an object; both become an object.
    arguments: dict[str, Any] | str = Field(default_factory=dict)

    @field_validator("arguments")
    @classmethod
    def _object(cls, v: dict[str, Any] | str) -> dict[str, Any] | str:
        if isinstance(v, str):
            try:
                v = json.loads(v) if v.strip() else {}
            except ValueError:
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


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[ToolCallIn] | None = Field(None, max_length=64)
    tool_call_id: str | None = None
    name: str | None = None

    _content_ok = field_validator("content")(_no_nul)

    @model_validator(mode="after")
    def _has_content(self) -> MessageIn:
        # Only an assistant turn that called tools may come without text.
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required")
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


class GenerateRequest(Req):
    prompt: str | None = None
    messages: list[MessageIn] | None = Field(None, max_length=1000)
    system: str | None = None
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=5)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=100_000)
    repeat_penalty: float | None = Field(None, ge=0, le=10)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    stop: str | list[str] | None = None
    stream: StrictBool = True
    tools: Any = None
    tool_choice: Any = None
    format: Any = None

    _text_ok = field_validator("prompt", "system", "stop")(_no_nul)
    _tools_ok = field_validator("tools")(_check_tools)
    _tool_choice_ok = field_validator("tool_choice")(_check_tool_choice)
    _format_ok = field_validator("format")(_check_format)

    @field_validator(
        "temperature", "top_p", "repeat_penalty", "frequency_penalty", "presence_penalty", mode="before"
    )
    @classmethod
    def _int_is_float(cls, v: Any) -> Any:
        # JSON has one number type; 0 and 1 are valid temperatures.
        return float(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateRequest:
        if self.prompt is not None and self.messages is not None:
            raise ValueError("give either prompt or messages, not both")
        if self.prompt is None and self.messages is None:
            raise EmptyPromptValue("a generate request needs a prompt or messages")
        if self.prompt is not None and not self.prompt.strip():
            raise EmptyPromptValue("the prompt is empty")
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

    def to_input(self, max_tokens: int) -> GenerateInput:
        msgs: list[ChatMessage] = []
        if self.system:
            msgs.append(ChatMessage("system", self.system))
        if self.messages is not None:
            msgs.extend(_chat_message(m) for m in self.messages)
        else:
            assert self.prompt is not None
            msgs.append(ChatMessage("user", self.prompt))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return GenerateInput(
            messages=tuple(msgs),
            max_tokens=max_tokens,
            sampling=Sampling(
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=self.top_k,
                repeat_penalty=self.repeat_penalty,
                frequency_penalty=self.frequency_penalty,
                presence_penalty=self.presence_penalty,
                seed=self.seed,
                stop=stop,
            ),
            tools=tuple(self.tools or ()),
            tool_choice="function" if isinstance(self.tool_choice, dict) else self.tool_choice or "auto",
            tool_name=self.tool_choice["function"]["name"] if isinstance(self.tool_choice, dict) else None,
            format=self.format,
        )


def _chat_message(m: MessageIn) -> ChatMessage:
    calls = tuple(
        ToolCall(c.id or new_call_id(), c.function.name, dict(c.function.arguments))  # type: ignore[arg-type]
        for c in m.tool_calls or ()
    )
    return ChatMessage(m.role, m.content or "", calls, m.tool_call_id, m.name)


class EmptyPromptValue(ValueError):
    """Raised inside validation so the error maps to the empty_prompt code."""


class CancelRequest(Req):
    # ``id`` here names the request to cancel.
    pass


class ModelRequest(Req):
    model: str | None = None


class NoArgsRequest(Req):
    pass


Serve = Literal["generate", "cancel", "models", "queue"]


@dataclass(frozen=True)
class Command:
    """One request topic ``<base>/request/<name>``: its payload model, the field a plain-text
    payload fills, and how rkllmd serves it (rkllmd/ingress.py): ``queue`` goes through the
    inference queue as a control job, ``models`` and ``cancel`` are answered at once."""

    name: str
    request: type[Req]
    plain_field: str | None
    serve: Serve


# The one command table: topics, validation, plain-text payloads and serving all read it.
COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("generate", GenerateRequest, "prompt", "generate"),
        Command("cancel", CancelRequest, "id", "cancel"),
        Command("models", NoArgsRequest, None, "models"),
        Command("load", ModelRequest, "model", "queue"),
        Command("unload", ModelRequest, "model", "queue"),
        Command("clear_cache", ModelRequest, "model", "queue"),
    )
}


def _broker_refuses(ch: str) -> bool:
    """Characters a broker may treat as malformed UTF-8 and answer by closing the connection
    (mosquitto does): controls, surrogates, non-characters. Publishing a reply to such a topic
    would disconnect rkllmd, and paho would resend it after every reconnect."""
    cp = ord(ch)
    return (
        cp <= 0x1F
        or 0x7F <= cp <= 0x9F
        or 0xD800 <= cp <= 0xDFFF
        or 0xFDD0 <= cp <= 0xFDEF
        or (cp & 0xFFFE) == 0xFFFE
    )


def check_publish_topic(topic: str, what: str) -> None:
    """Reject topics rkllmd must never publish to (wildcards, empty, $-topics, control characters)."""
    if not topic or len(topic.encode("utf-8", "surrogatepass")) > 1024:
        raise ValueError(f"{what} must be a non-empty topic under 1 KiB")
    if "+" in topic or "#" in topic:
        raise ValueError(f"{what} must not contain + or #")
    if topic.startswith("$"):
        raise ValueError(f"{what} must not start with $")
    if any(_broker_refuses(ch) for ch in topic):
        raise ValueError(f"{what} must not contain control characters, surrogates or non-characters")


def _depth(obj: Any, limit: int) -> int:
    """Nesting depth of a decoded JSON value, iterative so hostile input cannot blow the stack."""
    stack = [(obj, 1)]
    deepest = 0
    while stack:
        cur, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(cur, dict):
            stack.extend((v, d + 1) for v in cur.values())
        elif isinstance(cur, list):
            stack.extend((v, d + 1) for v in cur)
    return deepest


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:24]} is out of range")
    return value


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode_payload(payload: bytes, command: str, max_bytes: int) -> dict[str, Any]:
    """Turn raw bytes into a request dict: JSON object, or plain text for the command's main field."""
    if len(payload) > max_bytes:
        raise PayloadTooLarge(f"payload is {len(payload)} bytes; the limit is {max_bytes}")
    payload = payload.removeprefix(UTF8_BOM)  # Windows tools write one; it is not part of the text
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"payload is not valid UTF-8 (byte {exc.start})") from exc
    stripped = text.strip()
    if stripped.startswith("{") or stripped.startswith("["):
        try:
            obj = json.loads(stripped, parse_float=_finite_float, parse_constant=_not_json)
        except (ValueError, RecursionError) as exc:  # ValueError: also ints over 4300 digits, NaN
            raise BadJson(f"malformed JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise BadJson("the JSON payload must be an object")
        if _depth(obj, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
            raise BadJson(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        try:  # a \ud800 escape decodes to a lone surrogate, which no reply could echo back
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            where = next((k for k, v in obj.items() if not echoable({k: v})), "")
            where = f"{where}: " if echoable(where) else ""
            raise RequestError(f"{where}the JSON payload contains an unpaired surrogate escape") from exc
        return obj
    if "\x00" in text:
        raise RequestError("plain-text payload contains NUL")
    if not stripped:
        if command == "generate":
            raise EmptyPrompt("the prompt is empty")
        return {}
    field_name = COMMANDS[command].plain_field
    if field_name is None:
        return {}
    return {field_name: text if command == "generate" else stripped}


def echoable(value: Any) -> bool:
    """Whether a reply can carry ``value`` back as valid JSON in UTF-8 (no lone surrogate, NaN)."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (ValueError, TypeError, RecursionError):  # UnicodeEncodeError is a ValueError
        return False
    return True


def read_address(payload: bytes, max_bytes: int) -> dict[str, Any]:
    """The top-level ``id``, ``reply_to`` and ``transaction`` of a payload that decode_payload
    refused, as far as the bytes allow, so that the refusal still goes where the request asked.

    Bounded: a payload over ``ADDRESS_READ_FACTOR`` times the limit is not read at all (its refusal
    goes to the default topic); otherwise it is parsed once as JSON, invalid UTF-8 read as lone
    surrogates. Only a JSON object yields anything, and the values are not checked here: the
    caller takes an id, a reply topic or a transaction only if it is valid on its own. A
    transaction longer than the limit is left out, so a refusal is never larger than a request.
    """
    if len(payload) > ADDRESS_READ_FACTOR * max_bytes:
        return {}
    text = payload.removeprefix(UTF8_BOM).decode("utf-8", "surrogateescape").strip()
    if not text.startswith("{"):
        return {}
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(obj, dict):
        return {}
    out = {k: obj[k] for k in ADDRESS_FIELDS if k in obj}
    if "transaction" in out and not (
        echoable(out["transaction"]) and len(json.dumps(out["transaction"])) <= max_bytes
    ):
        del out["transaction"]
    return out


def validate(command: str, obj: dict[str, Any]) -> Req:
    """Validate a request dict into its typed model, mapping problems to error codes."""
    model = COMMANDS[command].request
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        problems = []
        wrong_type = False
        for err in exc.errors():
            ctx_err = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_err, EmptyPromptValue):
                raise EmptyPrompt(str(ctx_err)) from None
            loc = _loc(err["loc"])
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            if err["type"] == "located":  # the message names its own field
                problems.append(msg)
                continue
            if err["type"] == "literal_error":
                # A string outside the allowed set is a wrong value; anything else a wrong type.
                expected = (err.get("ctx") or {}).get("expected", "")
                msg = f"must be one of {expected} (got {_short(err['input'])})"
                wrong_type = wrong_type or not isinstance(err["input"], str)
            else:
                wrong_type = wrong_type or err["type"].endswith("_type")
            problems.append(f"{loc}: {msg}")
        cls = WrongType if wrong_type else RequestError
        raise cls("invalid request: " + "; ".join(problems), problems=problems) from None


def _loc(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a field path: ``messages[0].role``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "request"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def new_request_id() -> str:
    return uuid.uuid4().hex[:12]


# --- replies: every body rkllmd publishes for a request is laid out here --------------------


def reply_body(
    status: Literal["ok", "error"],
    data: dict[str, Any],
    code: str | None,
    error: str | None,
    request_id: str | None,
    address: Address | None = None,
) -> dict[str, Any]:
    """A final reply in the one envelope every command uses; the address adds the transaction."""
    out: dict[str, Any] = {"status": status}
    if request_id is not None:
        out["id"] = request_id
    if address is not None and address.has_transaction:
        out["transaction"] = address.transaction
    if status == "error":
        out["code"] = code
        out["error"] = error
    out["data"] = data
    return out


def to_json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def generation_data(
    model: str | None,
    text: str,
    finish_reason: str,
    prompt_tokens: int | None,
    completion_tokens: int,
    timings: dict[str, Any],
) -> dict[str, Any]:
    """The ``data`` of a generate reply that ran (finished, cancelled, or timed out part-way)."""
    return {
        "model": model,
        "text": text,
        "finish_reason": finish_reason,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": (prompt_tokens or 0) + completion_tokens,
        },
        "timings": timings,
    }


def partial_data(command: str, model: str | None, text: str, completion_tokens: int) -> dict[str, Any]:
    """The ``data`` of an error reply: what a generation produced before it failed."""
    if command != "generate":
        return {"model": model}
    return {"model": model, "text": text, "completion_tokens": completion_tokens}


def control_data(command: str, model: str | None) -> dict[str, Any]:
    """The ``data`` of a load, unload or clear_cache reply."""
    if command == "load":
        return {"model": model, "loaded": True}
    if command == "unload":
        return {"model": model, "loaded": False}
    return {"model": model, "cleared": True}


def stream_chunk(request_id: str, seq: int, delta: str) -> bytes:
    return json.dumps({"id": request_id, "seq": seq, "delta": delta}, ensure_ascii=False).encode()


def stream_end(request_id: str, seq: int, finish_reason: str, status: str = "ok") -> bytes:
    body = {"id": request_id, "seq": seq, "done": True, "finish_reason": finish_reason, "status": status}
    return json.dumps(body).encode()
