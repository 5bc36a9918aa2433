"""JSON schemas for structured output and forced tool calls: admission checks and a small validator.

The validator covers the subset a runtime without grammars can be held to (type, properties,
required, enum, const, items, anyOf); other keywords are accepted and not checked. Pure functions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

MAX_SCHEMA_BYTES = 16 * 1024  # a grammar built from a larger schema costs more than it is worth
_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


def check_schema(schema: Any, where: str) -> None:
    """Raise ValueError naming ``where`` if ``schema`` is not a usable JSON schema object or too large."""
    if not isinstance(schema, dict):
        raise ValueError(f"{where}: a JSON schema must be an object")
    size = len(json.dumps(schema, ensure_ascii=False).encode())
    if size > MAX_SCHEMA_BYTES:
        raise ValueError(f"{where}: the schema is {size} bytes; the limit is {MAX_SCHEMA_BYTES}")
    _check(schema, where, 0)


def _check(s: Any, where: str, depth: int) -> None:
    if isinstance(s, bool):
        return  # true/false are schemas too
    if not isinstance(s, dict):
        raise ValueError(f"{where}: a schema must be an object or a boolean")
    t = s.get("type")
    types = t if isinstance(t, list) else [t] if t is not None else []
    if not all(isinstance(x, str) and x in _TYPES for x in types):
        raise ValueError(f"{where}.type: must be one of {', '.join(sorted(_TYPES))}")
    props = s.get("properties")
    if props is not None:
        if not isinstance(props, dict):
            raise ValueError(f"{where}.properties: must be an object")
        for k, v in props.items():
            _check(v, f"{where}.properties.{k}", depth + 1)
    req = s.get("required")
    if req is not None and not (isinstance(req, list) and all(isinstance(x, str) for x in req)):
        raise ValueError(f"{where}.required: must be a list of strings")
    enum = s.get("enum")
    if enum is not None and not (isinstance(enum, list) and enum):
        raise ValueError(f"{where}.enum: must be a non-empty list")
    if "items" in s:
        _check(s["items"], f"{where}.items", depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in s:
            alts = s[key]
            if not isinstance(alts, list) or not alts:
                raise ValueError(f"{where}.{key}: must be a non-empty list of schemas")
            for i, alt in enumerate(alts):
                _check(alt, f"{where}.{key}[{i}]", depth + 1)


def format_schema(fmt: str | dict[str, Any]) -> dict[str, Any]:
    """The schema a ``format`` asks for: ``"json"`` is any JSON object."""
    return {"type": "object"} if fmt == "json" else fmt  # type: ignore[return-value]


def tool_call_schema(
    tools: Sequence[dict[str, Any]], only: str | None = None, args_key: str = "arguments"
) -> dict[str, Any]:
    """The schema of one call body ``{"name", <args_key>}`` to one of ``tools`` (or to ``only``);
    ``args_key`` is what the format calls the arguments (Llama 3: ``parameters``)."""
    alts = []
    for t in tools:
        fn = t["function"]
        if only is not None and fn["name"] != only:
            continue
        params = fn.get("parameters") or {"type": "object"}
        alts.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, args_key: params},
                "required": ["name", args_key],
            }
        )
    return alts[0] if len(alts) == 1 else {"anyOf": alts}


def validate(value: Any, schema: Any, where: str = "$") -> list[str]:
    """Where ``value`` breaks ``schema`` (the subset above), as ``path: problem`` lines; [] if it fits."""
    if schema is True or not isinstance(schema, dict):
        return [] if schema is not False else [f"{where}: no value is allowed"]
    problems: list[str] = []
    t = schema.get("type")
    if t is not None:
        types = t if isinstance(t, list) else [t]
        if not any(_is(value, x) for x in types):
            return [f"{where}: expected {' or '.join(types)}, got {_name(value)}"]
    if "const" in schema and value != schema["const"]:
        problems.append(f"{where}: must be {json.dumps(schema['const'])}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{where}: must be one of {json.dumps(schema['enum'])}")
    if isinstance(value, dict):
        for key in schema.get("required") or []:
            if key not in value:
                problems.append(f"{where}: missing required property {key!r}")
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                problems += validate(value[key], sub, f"{where}.{key}")
        if schema.get("additionalProperties") is False:
            extra = set(value) - set(schema.get("properties") or {})
            problems += [f"{where}: unexpected property {k!r}" for k in sorted(extra)]
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            problems += validate(item, schema["items"], f"{where}[{i}]")
    for key in ("anyOf", "oneOf"):
        if key in schema and not any(not validate(value, alt, where) for alt in schema[key]):
            problems.append(f"{where}: matches none of the {key} alternatives")
    for alt in schema.get("allOf") or []:
        problems += validate(value, alt, where)
    return problems


def _is(value: Any, t: str) -> bool:
    if t == "object":
        return isinstance(value, dict)
    if t == "array":
        return isinstance(value, list)
    if t == "string":
        return isinstance(value, str)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "null":
        return value is None
    if isinstance(value, bool):
        return False
    if t == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return isinstance(value, (int, float))  # number


def _name(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
