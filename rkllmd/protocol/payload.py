"""A payload's bytes to a validated request: decode (JSON object or plain text), then validate
into the command's model, each problem mapped to its error code (rkllmd/errors.py).

Pure functions and data only: no network, no threads. Hostile input is bounded here, before
any model sees it: size, nesting depth, infinities, lone surrogates, NUL.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from rkllmd.errors import (
    BadJson,
    EmptyPrompt,
    PayloadTooLarge,
    RequestError,
    WrongType,
)
from rkllmd.protocol import numbers
from rkllmd.protocol.address import UTF8_BOM, echoable
from rkllmd.protocol.commands import Command
from rkllmd.protocol.requests import EmptyPromptValue, Req

# Far deeper than any real request; a bound so the depth walk and pydantic stay cheap on hostile input.
MAX_JSON_DEPTH = 32


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


def decode_payload(payload: bytes, command: Command, max_bytes: int) -> dict[str, Any]:
    """Turn raw bytes into a request dict: JSON object, or plain text for the command's main field
    (a generating command's prompt as written; any other's stripped)."""
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
            obj = numbers.loads(stripped)  # the one parser of every interface: finite numbers only
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
        if command.generates:
            raise EmptyPrompt("the prompt is empty")
        return {}
    if command.plain_field is None:
        return {}
    return {command.plain_field: text if command.generates else stripped}


def validate(command: Command, obj: dict[str, Any]) -> Req:
    """Validate a request dict into the command's typed model, mapping problems to error codes."""
    try:
        return command.request.model_validate(_nulls_absent(command.request, obj))
    except ValidationError as exc:
        problems = []
        wrong_type = False
        for err in exc.errors():
            ctx_err = (err.get("ctx") or {}).get("error")
            if isinstance(ctx_err, EmptyPromptValue):
                raise EmptyPrompt(str(ctx_err)) from None
            loc = _loc(err["loc"])
            msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            if err["type"] == "value_error" and ctx_err is not None:
                msg = str(ctx_err)  # our own words, without pydantic's "Value error, " in front
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


def _nulls_absent(model: type[Req], obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` without the nulls of fields that have a default: JSON null means "not given", as
    the OpenAI and Ollama APIs read it and as Node-RED flows and Home Assistant templates write
    an unset field (docs/PROTOCOL.md, "Null is absent"). A field a request needs (``prompt`` or
    ``messages``, ``input``, ``query``) defaults to None, so its null reaches the model's own
    check, which refuses it naming the field."""
    fields = model.model_fields

    def defaulted(k: str) -> bool:
        f = fields.get(k)
        return f is not None and not f.is_required() and f.get_default(call_default_factory=True) is not None

    return {k: v for k, v in obj.items() if v is not None or not defaulted(k)}


def _loc(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a field path: ``messages[0].role``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "request"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
