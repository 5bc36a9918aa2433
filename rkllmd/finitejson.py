"""JSON text to a value with finite numbers only: the one parser of every interface (through
``rkllmd.protocol.loads``) and of the tool calls a model writes (``rkllmd.toolcalls``).

Pure; a module of its own so that toolcalls, which protocol imports, can use it without importing
protocol back. Why strict: ``json.loads`` reads ``1e999`` as ``inf`` and ``NaN``/``Infinity`` as
floats, values no reply can carry back as JSON and no sampler or tool can use.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:24]} is out of range (rkllmd takes finite numbers only)")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (rkllmd takes finite numbers only)")


def loads(text: str | bytes, *, strict: bool = True) -> Any:
    """JSON text to a value: a number that is not finite (``1e999``, ``-1e999``) and the
    ``NaN``/``Infinity`` literals are refused. ``strict=False`` allows control characters inside
    strings, as ``json.loads`` does. Raises ValueError (bytes that are not UTF-8 included) or
    RecursionError."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return json.loads(text, parse_float=_finite_float, parse_constant=_no_constant, strict=strict)
