"""What every format's parser makes of a call once it has found one: an id, and JSON call bodies.

Pure functions, shared by the formats in ``formats/`` (Hermes, and any family that writes
``{"name", "arguments"}`` objects between its own markers).
"""

from __future__ import annotations

import os
from typing import Any

from rkllmd import finitejson
from rkllmd.generation import ToolCall


def new_call_id() -> str:
    """A fresh id in OpenAI's shape, ``call_<hex>``.

    ``os.urandom`` is what ``secrets.token_hex`` reads; importing secrets would map OpenSSL's
    libcrypto (through hmac) into the runtime worker process, which imports this package."""
    return "call_" + os.urandom(12).hex()


def one_call(obj: Any) -> ToolCall | None:
    """``{"name": str, "arguments"|"parameters": object}`` as a call, or None when it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = finitejson.loads(args, strict=False)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(new_call_id(), obj["name"], args)


def parse_calls(body: str) -> list[ToolCall] | None:
    """The calls in one JSON body: a call object, or a JSON list of them (small models write
    several calls in one block so); None when the body is neither.

    Control characters inside strings are accepted (``strict=False``): llama.cpp's JSON grammar
    allows a raw newline in a string, and the call is no less clear for it. A number that is not
    finite (``1e999``) makes the call malformed: no reply could carry it back as JSON."""
    try:
        obj = finitejson.loads(body, strict=False)
    except ValueError:
        return None
    calls = [one_call(x) for x in obj] if isinstance(obj, list) and obj else [one_call(obj)]
    return None if any(c is None for c in calls) else [c for c in calls if c is not None]
