"""Numbers as every interface reads them: JSON text refusing non-finite numbers, and the one table
of the generate request's numeric fields with the coercion MQTT, the OpenAI API and the Ollama API
all apply.

Pure functions and data only: no network, no threads.

Why lenient on whole floats: JSON has one number type, and real clients send ``4096.0`` for an
integer. Home Assistant's number fields store floats (its Ollama integration sends
``options.num_ctx: 8192.0``), and Ollama itself takes a float wherever it takes an integer option
(``Options.FromMap`` in ollama/ollama api/types.go: "when JSON unmarshals numbers, it uses float64,
not int"). Ollama truncates ``4096.5``; rkllmd refuses it, as it refuses a boolean or a string.

Why strict on non-finite numbers: ``json.loads`` reads ``1e999`` as ``inf`` and ``NaN``/``Infinity``
as floats, values no reply can carry back as JSON and no sampler can use.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from rkllmd.finitejson import loads
from rkllmd.generation import SAMPLING_OPTIONS

__all__ = ["GENERATE_NUMBERS", "NotANumber", "NumberKind", "as_number", "describe", "loads", "what"]

NumberKind = Literal["integer", "number"]

# The generate request's numeric fields and their kind: the caps and every numeric sampling
# option (rkllmd.generation.SAMPLING_OPTIONS). protocol/requests.py validates with it.
GENERATE_NUMBERS: dict[str, NumberKind] = {"max_tokens": "integer", "max_thinking_tokens": "integer"}
for _option in SAMPLING_OPTIONS:
    if _option.kind != "strings":
        GENERATE_NUMBERS[_option.name] = _option.kind


class NotANumber(ValueError):
    """A value that is not a number of the kind wanted; the message says what was expected and got."""


def describe(value: Any) -> str:
    """A value as an error message quotes it: JSON, at most 40 characters."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def as_number(value: Any, kind: NumberKind) -> int | float:
    """``value`` as a number of ``kind``: an integer from an int or a whole float (``4096.0``), a
    number (float) from an int or a float. Raises NotANumber for anything else: a bool, a string,
    ``4096.5`` for an integer, a non-finite float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NotANumber(f"expected {_WHAT[kind]}, got {describe(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise NotANumber(f"expected a finite number, got {value!r}")
    if kind == "number":
        return float(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise NotANumber(f"expected an integer, got {describe(value)}")
        return int(value)
    return value


_WHAT: dict[NumberKind, str] = {"integer": "an integer", "number": "a number"}


def what(kind: NumberKind) -> str:
    """``an integer`` or ``a number``, as error messages say it."""
    return _WHAT[kind]
