"""OpenAI's wire format: request bodies in, response objects, stream chunks and errors out.

Pure functions and data only (no threads, no sockets), so every shape is unit-testable. The shapes
follow the official ``openai`` Python client's types (``ChatCompletion``, ``ChatCompletionChunk``,
``Completion``, ``Model``) and OpenAI's error envelope ``{"error": {message, type, param, code}}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from rkllmd import protocol

from .errors import ApiError, OpenAIErrors, error_body

__all__ = ["ApiError", "Ask", "Kind", "OpenAIErrors", "Shape", "error_body", "parse"]

from . import parts

Kind = Literal["chat", "text"]

# Request fields passed to rkllmd after a type check: the sampling options OpenAI's API names
# (protocol.SAMPLING_OPTIONS: each option's ``openai`` name; max_tokens comes from either of
# OpenAI's names below). ``tools``, ``tool_choice`` and ``response_format`` are mapped onto
# rkllmd's fields (which rkllmd validates); anything else a client sends (user, logprobs, ...) is
# ignored, as OpenAI-compatible servers do.
_SAMPLING = tuple(o for o in protocol.SAMPLING_OPTIONS if o.openai)
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_ROLES |= {"tool": "tool", "function": "tool"}


@dataclass
class Ask:
    """A validated OpenAI request, as the rkllmd generate fields it becomes."""

    kind: Kind
    model: str | None  # as the client named it; None: the default model
    fields: dict[str, Any]  # rkllmd generate fields: messages or prompt, sampling, max_tokens, stop
    stream: bool = False
    include_usage: bool = False
    echo: str = ""  # /v1/completions with echo: the prompt, sent before the completion
    param: str = "messages"  # the field a context error is about
    places: dict[str, str] = field(default_factory=dict)  # rkllmd's image paths -> the parts sent


# --- parsing ------------------------------------------------------------------------------------


def decode_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or 400 as OpenAI answers an unparsable body."""
    try:
        obj = protocol.loads(raw)  # finite numbers only: 1e999 and NaN are refused here
    except (ValueError, RecursionError) as exc:  # also UnicodeDecodeError
        raise ApiError(
            400, f"We could not parse the JSON body of your request: {exc}", code="bad_json"
        ) from None
    if not isinstance(obj, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="bad_json")
    return obj


def parse(kind: Kind, body: dict[str, Any]) -> Ask:
    """Check the fields rkllmd uses; wrong types are 400 ``invalid_type`` naming the field."""
    model = _opt(body, "model", str, "a string")
    if kind == "chat":
        ask = Ask(kind, model, {"messages": _messages(body)}, places=parts.places(body["messages"]))
    else:
        prompt = _prompt(body)
        ask = Ask(kind, model, {"prompt": prompt}, param="prompt")
        if _opt(body, "echo", bool, "a boolean"):
            ask.echo = prompt
    fields = ask.fields
    for option in _SAMPLING:
        value = _option(body, option)
        if value is not None:
            fields[option.name] = value
    # max_completion_tokens replaced max_tokens for chat; either is honoured, the newer first.
    limit = _number(body, "max_completion_tokens", "integer")
    if limit is None:
        limit = _number(body, "max_tokens", "integer")
    if limit is not None:
        fields["max_tokens"] = limit
    n = _number(body, "n", "integer")
    if n is not None and n != 1:
        raise ApiError(
            400, "Only n=1 is supported: rkllmd generates one choice.", param="n", code="invalid_value"
        )
    if kind == "chat":
        _tools(body, fields)
    think = _think(body)
    if think is not None:
        fields["think"] = think
    ask.stream = bool(_opt(body, "stream", bool, "a boolean"))
    options = _opt(body, "stream_options", dict, "an object") or {}
    ask.include_usage = bool(
        _opt(options, "include_usage", bool, "a boolean", "stream_options.include_usage")
    )
    return ask


def _tools(body: dict[str, Any], fields: dict[str, Any]) -> None:
    """tools and tool_choice as they are; response_format as rkllmd's ``format``."""
    if body.get("tools") is not None:
        fields["tools"] = body["tools"]
    if body.get("tool_choice") is not None:
        fields["tool_choice"] = body["tool_choice"]
    rf = _opt(body, "response_format", dict, "an object")
    if rf is None or rf.get("type") == "text":
        return
    if rf.get("type") == "json_object":
        fields["format"] = "json"
        return
    if rf.get("type") == "json_schema":
        spec = _opt(rf, "json_schema", dict, "an object", "response_format.json_schema") or {}
        schema = _opt(spec, "schema", dict, "an object", "response_format.json_schema.schema")
        fields["format"] = schema if schema is not None else "json"
        return
    raise ApiError(
        400,
        f"Invalid value for 'response_format.type': {rf.get('type')!r}; "
        "use 'text', 'json_object' or 'json_schema'.",
        param="response_format.type",
        code="invalid_value",
    )


# OpenAI's levels as its client types them (openai 3.26.0: none … high, xhigh, max); every one
# but none and minimal means on, as no runtime here has degrees of thinking.
_EFFORT = {"none": False, "minimal": False} | dict.fromkeys(("low", "medium", "high", "xhigh", "max"), True)


def _think(body: dict[str, Any]) -> bool | None:
    """The thinking switch as OpenAI-compatible servers take it, the first one given:
    ``chat_template_kwargs.enable_thinking`` (vLLM, llama.cpp's server), ``think`` (Ollama's
    name), ``reasoning_effort`` (OpenAI's: none and minimal are off); None when none is."""
    kwargs = _opt(body, "chat_template_kwargs", dict, "an object") or {}
    on = _opt(kwargs, "enable_thinking", bool, "a boolean", "chat_template_kwargs.enable_thinking")
    if on is not None:
        return bool(on)
    think = body.get("think")
    if think is not None:
        if isinstance(think, bool):
            return think
        if think in ("low", "medium", "high"):
            return True
        raise ApiError(
            400,
            f"Invalid value for 'think': {think!r}; use true, false, low, medium or high.",
            param="think",
            code="invalid_value",
        )
    effort = _opt(body, "reasoning_effort", str, "a string")
    if effort is None:
        return None
    if effort not in _EFFORT:
        raise ApiError(
            400,
            f"Invalid value for 'reasoning_effort': {effort!r}; "
            "use none, minimal, low, medium, high, xhigh or max.",
            param="reasoning_effort",
            code="invalid_value",
        )
    return _EFFORT[effort]


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    msgs = body.get("messages")
    if msgs is None:
        raise ApiError(
            400,
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(msgs, list):
        raise _wrong_type("messages", "an array", msgs)
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _wrong_type(where, "an object", m)
        role = m.get("role")
        if not isinstance(role, str):
            raise _wrong_type(f"{where}.role", "a string", role)
        if role not in _ROLES:
            raise ApiError(
                400,
                f"Invalid value for '{where}.role': {role!r}.",
                param=f"{where}.role",
                code="invalid_value",
            )
        text, images = _content(m.get("content"), f"{where}.content")
        msg: dict[str, Any] = {"role": _ROLES[role], "content": text}
        if images:  # data URIs, decoded and bounded at admission (parts.py)
            msg["images"] = images
        # Tool turns pass through; rkllmd checks them (shape, a result answering an earlier call).
        for key in ("tool_calls", "tool_call_id"):
            if m.get(key) is not None:
                msg[key] = m[key]
        if _ROLES[role] == "tool" and isinstance(m.get("name"), str):
            msg["name"] = m["name"]
        out.append(msg)
    return out


def _content(content: Any, where: str) -> tuple[str, list[str]]:
    """Message content: a string, null (an assistant turn that only called tools), or content
    parts (text, and images as data URIs: parts.py)."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise _wrong_type(where, "a string or an array of content parts", content)
    return parts.content(content, where, ApiError)


def _prompt(body: dict[str, Any]) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # a batch of one
    if prompt is None:
        raise ApiError(
            400, "Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter"
        )
    if isinstance(prompt, list):
        raise ApiError(400, "Only a single string prompt is supported.", param="prompt", code="invalid_value")
    if not isinstance(prompt, str):
        raise _wrong_type("prompt", "a string", prompt)
    return prompt


def _opt(obj: dict[str, Any], key: str, types: Any, what: str, where: str | None = None) -> Any:
    """``obj[key]`` if present and not null, checked against ``types`` (a bool is no number)."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _wrong_type(where or key, what, value)
    if not isinstance(value, types):
        raise _wrong_type(where or key, what, value)
    return value


def _option(body: dict[str, Any], option: protocol.Option) -> Any:
    """A sampling option under its OpenAI name: a number of its kind, or a string or an array of
    strings (an empty one is none); None when absent."""
    assert option.openai is not None
    if option.kind != "strings":
        return _number(body, option.openai, option.kind)
    value = body.get(option.openai)
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(s, str) for s in value)):
        return value or None
    if value is not None:
        raise _wrong_type(option.openai, "a string or an array of strings", value)
    return None


def _number(obj: dict[str, Any], key: str, kind: protocol.NumberKind) -> int | float | None:
    """``obj[key]`` as a number of ``kind`` if present and not null (a whole float is an integer)."""
    value = obj.get(key)
    if value is None:
        return None
    try:
        return protocol.as_number(value, kind)
    except protocol.NotANumber:
        raise _wrong_type(key, protocol.what(kind), value) from None


def _wrong_type(param: str, expected: str, got: Any) -> ApiError:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array"}
    got_name = "null" if got is None else names.get(type(got), "an object")
    if isinstance(got, float):  # 4096.5 for an integer: say which number
        got_name = protocol.describe(got)
    return ApiError(
        400,
        f"Invalid type for '{param}': expected {expected}, but got {got_name} instead.",
        param=param,
        code="invalid_type",
    )


# --- rkllmd outcomes as OpenAI answers ------------------------------------------------------------


def finish_reason(data: dict[str, Any]) -> str:
    """OpenAI knows stop, length, tool_calls, content_filter: a cancelled run ended on request,
    which strict clients can only take as ``stop`` (the text so far is all there is); a thought
    stopped at its cap (``thinking_limit``) ran out of tokens: ``length``."""
    reason = data.get("finish_reason")
    if reason == "thinking_limit":
        return "length"
    return reason if reason in ("length", "tool_calls") else "stop"


def tool_calls(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The reply's calls in OpenAI's shape: ``arguments`` a JSON string."""
    return [
        {
            "id": c["id"],
            "type": "function",
            "function": {
                "name": c["function"]["name"],
                "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False),
            },
        }
        for c in data.get("tool_calls") or []
    ]


def usage(data: dict[str, Any]) -> dict[str, int]:
    """OpenAI's usage; a prompt count rkllmd could not make (no tokenizer) is 0, never null."""
    u = data.get("usage") or {}
    prompt = int(u.get("prompt_tokens") or 0)
    completion = int(u.get("completion_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _usage(data: dict[str, Any]) -> dict[str, Any]:
    """``usage``, and rkllmd's ``timings`` beside it as llama.cpp's server adds its own (image
    decode and encode, prefill, decode: docs/PROTOCOL.md); clients keep unknown fields."""
    return {"usage": usage(data), **({"timings": data["timings"]} if data.get("timings") else {})}


@dataclass(frozen=True)
class Shape:
    """What every object of one response shares: ``id``, ``created``, ``model`` and its kind."""

    kind: Kind
    id: str
    created: int
    model: str

    def _head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def complete(self, text: str, data: dict[str, Any]) -> dict[str, Any]:
        """The non-streaming response: ``chat.completion`` or ``text_completion``, with usage."""
        reason = finish_reason(data)
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
            if data.get("thinking"):  # the name vLLM, llama.cpp's server and DeepSeek use
                message["reasoning_content"] = data["thinking"]
            calls = tool_calls(data)
            if calls:
                message["tool_calls"] = calls
                message["content"] = text or None
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": reason}
            return {**self._head("chat.completion"), "choices": [choice], **_usage(data)}
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
        return {**self._head("text_completion"), "choices": [choice], **_usage(data)}

    def chunk(
        self,
        *,
        delta: str | None = None,
        first: bool = False,
        finish: str | None = None,
        usage_null: bool = False,
        thinking: str | None = None,
    ) -> dict[str, Any]:
        """One stream chunk. Chat: the first carries the role, the last an empty delta and the
        finish reason; a thinking model's thought comes as ``reasoning_content`` deltas.
        Completions: text pieces, the last with the finish reason."""
        if self.kind == "chat":
            d: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
            if delta is not None:
                d["content"] = delta
            if thinking is not None:
                d["reasoning_content"] = thinking
            choice: dict[str, Any] = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
            out = {**self._head("chat.completion.chunk"), "choices": [choice]}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
            out = {**self._head("text_completion"), "choices": [choice]}
        if usage_null:  # with stream_options.include_usage every chunk has usage, null but the last
            out["usage"] = None
        return out

    def tool_call_chunks(self, data: dict[str, Any], *, usage_null: bool = False) -> list[dict[str, Any]]:
        """The calls as OpenAI streams them: per call a delta with index, id, type, name and empty
        arguments, then one with the arguments (Home Assistant's llama_cpp parser reads exactly this)."""
        out = []
        for i, call in enumerate(tool_calls(data)):
            fn = call["function"]
            head = {
                "index": i,
                "id": call["id"],
                "type": "function",
                "function": {"name": fn["name"], "arguments": ""},
            }
            for piece in (head, {"index": i, "function": {"arguments": fn["arguments"]}}):
                choice = {
                    "index": 0,
                    "delta": {"tool_calls": [piece]},
                    "logprobs": None,
                    "finish_reason": None,
                }
                chunk: dict[str, Any] = {**self._head("chat.completion.chunk"), "choices": [choice]}
                if usage_null:
                    chunk["usage"] = None
                out.append(chunk)
        return out

    def usage_chunk(self, data: dict[str, Any]) -> dict[str, Any]:
        """The extra last chunk of ``stream_options.include_usage``: no choices, the usage."""
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._head(obj), "choices": [], **_usage(data)}


def models(names: list[str], created: int) -> dict[str, Any]:
    """``GET /v1/models``: the configured models as OpenAI ``model`` objects."""
    return {"object": "list", "data": [model(n, created) for n in names]}


def model(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "rkllmd"}
