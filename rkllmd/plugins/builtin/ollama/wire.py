"""Ollama's wire format: request bodies in, response lines, model listings and errors out.

Pure functions and data only (no threads, no sockets), so every mapping is unit-testable. The
shapes follow Ollama's API documentation (docs/api.md of ollama/ollama) and the official ``ollama``
Python client's types, which Home Assistant's integration uses: errors are ``{"error": "..."}``,
streams are one JSON object per line, the last with ``done: true`` and the durations in ns.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from rkllmd import protocol
from rkllmd.plugins import Final
from rkllmd.plugins.builtin._httpconfig import HttpError

Kind = Literal["chat", "generate"]

# The sampling options Ollama's ``options`` name (protocol.SAMPLING_OPTIONS: each option's
# ``ollama`` name), by that name; num_predict and num_ctx are read below.
_SAMPLING = {o.ollama: o for o in protocol.SAMPLING_OPTIONS if o.ollama}
_THINK_LEVELS = ("low", "medium", "high")
_ROLES = ("system", "user", "assistant", "tool")
_DURATION = re.compile(r"^(-?)((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+$")
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def error_body(status: int, message: str) -> dict[str, str]:
    """Ollama's error shape, for every status."""
    return {"error": message}


@dataclass
class Ask:
    """A checked Ollama request: the rkllmd generate fields it becomes, and what stays here."""

    kind: Kind
    model: str | None  # as the client named it; None: the default model
    fields: dict[str, Any]  # rkllmd generate fields: messages or prompt, system, sampling, tools ...
    stream: bool = True  # Ollama streams unless told not to
    keep_alive_s: float | None = None  # None: keep loaded; 0: unload after the answer
    num_ctx: int | None = None
    think: bool | str | None = None  # the thinking switch: true/false or an effort level (= true)
    images: bool = False  # the request carries images
    ignored: list[str] = field(default_factory=list)  # options rkllmd has no use for, for the log

    @property
    def empty(self) -> bool:
        """No prompt at all: Ollama's way to load (or, with keep_alive 0, unload) a model."""
        if self.kind == "generate":
            return not str(self.fields.get("prompt") or "").strip()
        return not self.fields.get("messages")


def decode_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is an empty object), or 400."""
    if not raw.strip():
        return {}
    try:
        obj = protocol.loads(raw)  # finite numbers only: 1e999 and NaN are refused here
    except (ValueError, RecursionError) as exc:  # also UnicodeDecodeError
        raise HttpError(400, f"invalid JSON body: {exc}") from None
    if not isinstance(obj, dict):
        raise HttpError(400, "the request body must be a JSON object")
    return obj


def parse(kind: Kind, body: dict[str, Any]) -> Ask:
    """Check an ``/api/chat`` or ``/api/generate`` body; wrong types and values are 400."""
    model = _opt(body, "model", str, "a string") or None
    if kind == "chat":
        messages, images = _messages(body)
        ask = Ask(kind, model, {"messages": messages} if messages else {}, images=images)
    else:
        prompt = _opt(body, "prompt", str, "a string") or ""
        ask = Ask(kind, model, {"prompt": prompt} if prompt else {})
        pictures = _images(body.get("images"), "images")
        if pictures:
            ask.fields["images"] = pictures
            ask.images = True
        system = _opt(body, "system", str, "a string")
        if system:
            ask.fields["system"] = system
        for unsupported in ("suffix", "context"):  # fill-in-the-middle and the old token context
            if body.get(unsupported):
                raise HttpError(400, f"'{unsupported}' is not supported by rkllmd")
        if _opt(body, "raw", bool, "a boolean"):
            raise HttpError(400, "raw prompts are not supported: rkllmd always applies the chat template")
    stream = _opt(body, "stream", bool, "a boolean")
    ask.stream = True if stream is None else stream
    tools = _opt(body, "tools", list, "an array")
    if tools:
        ask.fields["tools"] = tools  # Ollama's tool shape is OpenAI's, which rkllmd takes
    fmt = body.get("format")
    if fmt == "json" or isinstance(fmt, dict):
        ask.fields["format"] = fmt
    elif fmt not in (None, ""):
        raise HttpError(400, 'invalid format: expected "json" or a JSON schema object')
    think = body.get("think")
    if think is not None and not isinstance(think, bool) and think not in _THINK_LEVELS:
        raise HttpError(400, f"invalid think value {think!r}: expected true, false, low, medium or high")
    ask.think = think
    if think is not None:
        ask.fields["think"] = think
    ask.keep_alive_s = keep_alive_seconds(body.get("keep_alive"))
    _options(ask, _opt(body, "options", dict, "an object") or {})
    return ask


def _options(ask: Ask, options: dict[str, Any]) -> None:
    for name, value in options.items():
        if value is None:
            continue
        where = f"options.{name}"
        option = _SAMPLING.get(name)
        if option is not None:
            kind = option.kind
            value = _strings(value, where) if kind == "strings" else _number(value, kind, where)
            if value != []:  # no stop strings is none
                ask.fields[option.name] = value
        elif name == "num_predict":
            limit = _number(value, "integer", where)
            if limit > 0:  # -1 (infinite) and -2 (fill the context) mean "no cap of the client's"
                ask.fields["max_tokens"] = limit
        elif name == "num_ctx":
            ask.num_ctx = int(_number(value, "integer", where))
        else:  # num_thread, mirostat, min_p, ...: Ollama's runner knobs with no rkllmd equivalent
            ask.ignored.append(name)


def _messages(body: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """Ollama's messages as rkllmd's; tool calls get ids (Ollama sends none) and each tool
    result names the call it answers, in order, so a template that wants ids finds them."""
    msgs = _opt(body, "messages", list, "an array") or []
    out: list[dict[str, Any]] = []
    images = False
    pending: list[str] = []  # ids of the last assistant turn's calls not yet answered
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise HttpError(400, f"invalid type for {where}: expected an object")
        role = m.get("role")
        if role not in _ROLES:
            raise HttpError(400, f"invalid role {role!r} in {where}: expected one of {', '.join(_ROLES)}")
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            raise HttpError(400, f"invalid type for {where}.content: expected a string")
        msg: dict[str, Any] = {"role": role, "content": content or ""}
        pictures = _images(m.get("images"), f"{where}.images")
        if pictures:
            msg["images"] = pictures
            images = True
        calls = m.get("tool_calls")
        if role == "assistant" and calls:
            msg["tool_calls"] = _calls(calls, i)
            pending = [c["id"] for c in msg["tool_calls"]]
        elif role == "tool":
            name = m.get("tool_name") or m.get("name")
            if isinstance(name, str) and name:
                msg["name"] = name
            call_id = m.get("tool_call_id")
            if isinstance(call_id, str) and call_id:
                msg["tool_call_id"] = call_id
                if call_id in pending:
                    pending.remove(call_id)
            elif pending:
                msg["tool_call_id"] = pending.pop(0)
        # "thinking" of earlier assistant turns is dropped: thought is not prefilled again
        # (docs/THINKING.md); rkllmd takes thought tags out of the content itself.
        out.append(msg)
    return out, images


def _images(value: Any, where: str) -> list[str]:
    """Ollama's ``images``: base64 strings (the ollama client encodes bytes and files so), passed
    on to rkllmd as they are: admission decodes, bounds and checks them (docs/VISION.md)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise HttpError(400, f"invalid type for {where}: expected an array of base64 strings")
    return value


def _calls(calls: Any, i: int) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise HttpError(400, f"invalid type for messages[{i}].tool_calls: expected an array")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise HttpError(400, f"messages[{i}].tool_calls[{j}] needs function.name")
        args = fn.get("arguments") or {}
        if isinstance(args, str):  # some clients send OpenAI's JSON text
            try:
                args = protocol.loads(args)
            except (ValueError, RecursionError):
                raise HttpError(
                    400, f"messages[{i}].tool_calls[{j}].function.arguments is not JSON (finite numbers only)"
                ) from None
        if not isinstance(args, dict):
            raise HttpError(400, f"messages[{i}].tool_calls[{j}].function.arguments must be an object")
        call_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else f"call_{i}_{j}"
        out.append({"id": call_id, "type": "function", "function": {"name": fn["name"], "arguments": args}})
    return out


def keep_alive_seconds(value: Any) -> float | None:
    """Ollama's keep_alive: seconds as a number, or a Go duration ("5m", "1h30m", "0"); negative
    or absent is forever (None). A bare number in a string is taken as seconds too."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise HttpError(400, "invalid keep_alive: expected a number of seconds or a duration such as 5m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            if not _DURATION.match(text):
                raise HttpError(
                    400, f"invalid keep_alive duration {value!r}: e.g. 0, -1, 30s, 5m, 1h"
                ) from None
            seconds = sum(float(n) * _UNIT_S[u] for n, u in _PART.findall(text))
            seconds = -seconds if text.startswith("-") else seconds
    else:
        raise HttpError(400, "invalid keep_alive: expected a number of seconds or a duration such as 5m")
    return None if seconds < 0 else seconds


def _opt(obj: dict[str, Any], key: str, types: Any, what: str) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    _check(value, types if isinstance(types, tuple) else (types,), what, key)
    return value


def _check(value: Any, types: tuple[type, ...], expected: str, where: str) -> None:
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        raise HttpError(400, f"invalid type for {where}: expected {expected}, got {protocol.describe(value)}")


def _strings(value: Any, where: str) -> list[str]:
    """Stop strings as Ollama takes them: an array of strings, or one string."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise HttpError(
            400, f"invalid type for {where}: expected a string or an array of strings (got {value!r:.40})"
        )
    return value


def _number(value: Any, kind: protocol.NumberKind, where: str) -> int | float:
    """An option's number as Ollama takes it: a whole float (HA's ``8192.0``) is an integer."""
    try:
        return protocol.as_number(value, kind)
    except protocol.NotANumber:
        expected = protocol.what(kind)
        raise HttpError(
            400, f"invalid type for {where}: expected {expected}, got {protocol.describe(value)}"
        ) from None


# --- names --------------------------------------------------------------------------------------


def tag(name: str) -> str:
    """The Ollama name of a configured model: ``smollm2`` is listed as ``smollm2:latest``."""
    return name if ":" in name else f"{name}:latest"


def untag(name: str) -> str:
    """The configured name a request means: ``smollm2:latest`` and ``smollm2`` are the same."""
    return name.removesuffix(":latest")


# --- rkllmd outcomes as Ollama answers ------------------------------------------------------------

_STATUS: dict[str, int] = {
    "bad_json": 400,
    "wrong_type": 400,
    "bad_request": 400,
    "empty_prompt": 400,
    "context_exceeded": 400,
    "bad_image": 400,
    "images_unsupported": 400,
    "empty_input": 400,
    "too_many_inputs": 400,
    "too_many_images": 400,
    "wrong_model_kind": 400,
    "payload_too_large": 413,
    "image_too_large": 413,
    "unknown_model": 404,
    "busy": 503,
    "shutdown": 503,
    "model_load_failed": 503,
    "runtime_not_installed": 503,
    "runtime_version": 503,
}


# the endpoint for each rkllmd command a wrong_model_kind refusal names; Ollama has no rerank, so
# that one is the OpenAI-compatible plugin's (docs/EMBEDDINGS.md)
_ENDPOINTS = {"generate": "/api/chat", "embed": "/api/embed", "rerank": "/v1/rerank"}


class Failed(HttpError):
    """An rkllmd error reply as an HTTP error, keeping rkllmd's code for a spoken answer (_spoken)."""

    def __init__(self, status: int, message: str, headers: dict[str, str], code: str) -> None:
        super().__init__(status, message, headers)
        self.code = code


def outcome_error(outcome: Final, retry_after_s: int) -> Failed:
    """The HTTP answer to an rkllmd error reply (anything unlisted is a 500), its message whole
    but for the command a wrong_model_kind names, which is the endpoint here."""
    code = outcome.code or "internal_error"
    status = _STATUS.get(code, 500)
    headers = {"Retry-After": str(retry_after_s)} if code in ("busy", "shutdown") else {}
    message = outcome.error or code
    if code == "wrong_model_kind":
        message = protocol.use_named(message, _ENDPOINTS)
    return Failed(status, message, headers, code)


def now_iso() -> str:
    """Ollama's ``created_at``: RFC 3339 in UTC."""
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def done_reason(data: dict[str, Any]) -> str:
    """Ollama knows stop and length (a tool call ends with stop there too; so does a cancel);
    a thought stopped at its cap says ``thinking_limit`` (the client keeps any reason)."""
    reason = data.get("finish_reason")
    return reason if reason in ("length", "thinking_limit") else "stop"


def durations(data: dict[str, Any]) -> dict[str, int]:
    """Ollama's counts and durations (ns) from rkllmd's usage and timings (ms). rkllmd times a
    model load apart from the run only as part of the first token, so load_duration is 0."""
    t, u = data.get("timings") or {}, data.get("usage") or {}

    def ns(ms: Any) -> int:
        return int(float(ms or 0) * 1_000_000)

    return {
        "total_duration": ns(t.get("queue_ms")) + ns(t.get("total_ms")),
        "load_duration": 0,
        "prompt_eval_count": int(u.get("prompt_tokens") or 0),
        # Ollama's runner encodes a request's images as part of its prompt: so does this figure
        "prompt_eval_duration": ns(t.get("prefill_ms"))
        + ns(t.get("image_decode_ms"))
        + ns(t.get("image_encode_ms")),
        "eval_count": int(u.get("completion_tokens") or 0),
        "eval_duration": ns(t.get("decode_ms")),
    }


def tool_calls(data: dict[str, Any]) -> list[dict[str, Any]]:
    """rkllmd's tool calls as Ollama's ``message.tool_calls`` (arguments as an object)."""
    out = []
    for i, call in enumerate(data.get("tool_calls") or ()):
        fn = call.get("function") or {}
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except ValueError:
                args = {}
        item: dict[str, Any] = {"function": {"index": i, "name": fn.get("name"), "arguments": args or {}}}
        if call.get("id"):
            item["id"] = call["id"]
        out.append(item)
    return out


@dataclass(frozen=True)
class Shape:
    """What every line of one response shares: its kind and the model name the client used."""

    kind: Kind
    model: str

    def part(
        self, text: str, calls: list[dict[str, Any]] | None = None, thinking: str = ""
    ) -> dict[str, Any]:
        """One streamed line with a piece of the answer, of the thought, or the tool calls."""
        out: dict[str, Any] = {"model": self.model, "created_at": now_iso()}
        if self.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if thinking:
                message["thinking"] = thinking
            if calls:
                message["tool_calls"] = calls
            out["message"] = message
        else:
            out["response"] = text
            if thinking:
                out["thinking"] = thinking
        out["done"] = False
        return out

    def done(
        self,
        text: str,
        data: dict[str, Any],
        calls: list[dict[str, Any]] | None = None,
        thinking: str = "",
    ) -> dict[str, Any]:
        """The last line of a stream (text "") or the whole answer: done, its reason, the timings."""
        out = self.part(text, calls, thinking)
        out["done"] = True
        out["done_reason"] = done_reason(data)
        out.update(durations(data))
        return out

    def failed(self, sentence: str) -> dict[str, Any]:
        """The last line (or the whole answer) of a request answered with a sentence instead of an
        error: ``done_reason`` "error", which Ollama never sends, tells a program it is not the
        model's text (the ollama client keeps any done_reason; Home Assistant ignores it)."""
        out = self.part(sentence)
        out.update(done=True, done_reason="error")
        out.update(durations({}))
        return out

    def control(self, reason: Literal["load", "unload"]) -> dict[str, Any]:
        """The answer to an empty request, which loads or unloads the model."""
        out = self.part("")
        out.update(done=True, done_reason=reason)
        return out
