"""Tools and tool turns as text, in the Hermes format (Qwen2.5/Qwen3, NousHermes, RKLLM's own).

Used where nothing renders tools for us: a chat template that ignores ``tools`` (llama.cpp), an
RKLLM release without rkllm_set_function_tools, and the plain transcript of earlier turns.
Pure functions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rkllmd.generation import ToolCall

# Qwen2.5's own template wording, so a Qwen model reads what it was trained on.
_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)


def hermes_system_block(tools: Sequence[dict[str, Any]]) -> str:
    """The system-prompt section that offers ``tools`` (OpenAI-shaped) to a Hermes-style model."""
    lines = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
    return _HEAD + lines + _TAIL


def system_with_tools(system: str | None, tools: Sequence[dict[str, Any]]) -> str:
    """``system`` with the Hermes block for ``tools`` after it, or the block alone without one."""
    block = hermes_system_block(tools)
    return f"{system}\n\n{block}" if system else block


def call_block(name: str, arguments: dict[str, Any]) -> str:
    """One call as the model writes it."""
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def assistant_text(content: str, calls: Sequence[ToolCall]) -> str:
    """An assistant turn as Hermes text: its content, then each call it made as the model wrote it."""
    blocks = [call_block(c.name, c.arguments) for c in calls]
    return "\n".join([content, *blocks] if content else blocks)


def response_block(content: str) -> str:
    """One tool result as a Hermes model reads it (in a user turn)."""
    return f"<tool_response>\n{content}\n</tool_response>"
