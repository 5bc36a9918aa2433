"""A field that takes one of several shapes (a union), told in one sentence when a value has none.

Pydantic reports a value that fits no member of a union once per member (``stop.str: Input
should be a valid string; stop.list[str]: Input should be a valid list``), in its own words. A
field with several shapes takes :func:`one_of` before pydantic's union sees the value, so the
refusal names the field once with the shapes it takes: ``stop: must be a string or a list of
strings (got 5)``, ``wrong_type`` (docs/PROTOCOL.md). Pure; whichever thread validates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError


def wrong_shape(what: str, value: Any) -> PydanticCustomError:
    """The one sentence for a value of none of a field's shapes (``what``: "a string or …");
    ``rkllmd.protocol.payload.validate`` puts the field's path in front, and its type (``…_type``)
    makes the refusal ``wrong_type``."""
    return PydanticCustomError("shape_type", f"must be {what} (got {value!r:.40})")


def one_of(what: str, fits: Callable[[Any], bool]) -> BeforeValidator:
    """A check for an ``Annotated`` union: a value ``fits`` passes on to the union, any other is
    refused by :func:`wrong_shape`."""

    def check(value: Any) -> Any:
        if fits(value):
            return value
        raise wrong_shape(what, value)

    return BeforeValidator(check)


def is_strings(value: Any) -> bool:
    """A string or a list of strings (stop strings)."""
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(s, str) for s in value))


STRINGS = one_of("a string or a list of strings", is_strings)
#: A tool call's arguments: OpenAI sends a JSON string, Ollama an object.
ARGUMENTS = one_of("a JSON object or a string holding one", lambda v: isinstance(v, dict | str))
