"""Rendering a model's real chat template (tests/fixtures/*.jinja) as Hugging Face's
``apply_chat_template`` and llama-cpp-python do: a sandboxed Jinja2 environment with
``trim_blocks`` and ``lstrip_blocks``, ``raise_exception``, and a ``tojson`` that keeps non-ASCII.
Tests use it to check that a format reads what the family's own template writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def render(template: str, messages: list[dict[str, Any]], **context: Any) -> str:
    """``tests/fixtures/<template>`` rendered for ``messages`` (and ``tools``, ... in ``context``)."""
    sandbox = pytest.importorskip("jinja2.sandbox")

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    text = (FIXTURES / template).read_text()
    out: str = env.from_string(text).render(messages=messages, bos_token="<bos>", **context)
    return out
