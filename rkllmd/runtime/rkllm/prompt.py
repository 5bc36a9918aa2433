"""What the RKLLM runtime is handed for one run: its chat template and the prompt text.

The runtime renders the model's own template around one user turn; rkllmd chooses the
three-part template (system, prefix, postfix; ChatML when a system prompt is wanted and none is
configured) and the text of that turn. Pure functions of the model's settings (a pydantic model
or, in a worker process, a Table of the same names), the input, and whether the loaded release
takes tools itself (rkllm_set_function_tools, 1.2.1+); where it does not, the model's tool-call
format (rkllmd.toolcalls) writes tools, calls and results as text. Called on the inference thread.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rkllmd import finitejson, logface, toolcalls
from rkllmd.generation import ChatMessage, GenerateInput

if TYPE_CHECKING:
    from rkllmd.runtime.rkllm.settings import ChatTemplate, RkllmModelSettings
    from rkllmd.toolcalls import ToolFormat

log = logface.get_logger("rkllmd.runtime.rkllm.runtime")


@dataclass(frozen=True)
class Template:
    """RKLLM's three-part chat template, as a ``chat_template`` table has it ({system} replaced)."""

    system: str = ""
    prefix: str = ""
    postfix: str = ""


# Used when a system prompt is wanted but the model config has no chat_template: ChatML, the
# format of the Qwen family that most RKLLM models are. Set chat_template for other families.
CHATML = Template(
    system="<|im_start|>system\n{system}<|im_end|>\n",
    prefix="<|im_start|>user\n",
    postfix="<|im_end|>\n<|im_start|>assistant\n",
)
TOOL_RESPONSE = "tool_response"  # the tag the runtime wraps role="tool" input in (vendor demo)


def wanted_template(
    cfg: RkllmModelSettings, inp: GenerateInput, native_tools: bool, fmt: ToolFormat
) -> tuple[str, str, str] | None:
    """The template strings this run wants, or None for the model's built-in template."""
    system = inp.system or cfg.system_prompt
    if inp.active_tools and not native_tools:
        # 1.2.0 / 1.2.1b1: no tool API, so the format's tool section goes into the system prompt.
        system = fmt.render_tools(system, inp.active_tools)
    tpl = cfg.chat_template
    if tpl is None and system is None:
        return None
    sys_text, prefix, postfix = render(tpl or CHATML, system or "")
    # Under a template of ours the runtime ignores enable_thinking: a thinking model's switch
    # is then the template's own (Qwen3: an empty block after the assistant tag turns it off).
    off = getattr(tpl, "no_thinking", "") if not inp.thinking.on else ""
    return (sys_text, prefix, postfix + off)


def render(tpl: ChatTemplate | Template, system: str) -> tuple[str, str, str]:
    """``tpl``'s three strings with ``system`` in it (ChatML without a system prompt: no system part)."""
    sys_text = tpl.system.replace("{system}", system) if system or tpl is not CHATML else ""
    return (sys_text, tpl.prefix, tpl.postfix)


def prompt_text(cfg: RkllmModelSettings, inp: GenerateInput, native_tools: bool, fmt: ToolFormat) -> str:
    """The text one run sends as ``prompt_input``.

    The runtime wraps it in the model's own template as one user turn. With keep_history
    the runtime remembers earlier turns itself, so only the last one is sent; without it,
    earlier turns of a chat would be lost, so they go in front as a plain transcript (the
    runtime offers no way to send a multi-turn template of ours).
    """
    turns, n_results, earlier = _split(inp)
    # Tool results at the end are one input: role "tool" (several as a JSON array, as the
    # runtime asks), or the format's result text in a user turn (input_role).
    as_tool = input_role(cfg, inp, native_tools) == "tool"
    last = _last_input(turns[len(turns) - n_results :], as_tool, fmt) if n_results else inp.last_user
    if cfg.keep_history or not earlier:
        return last
    names = {"user": "User", "assistant": "Assistant", "tool": "Tool"}
    lines = [f"{names.get(m.role, m.role)}: {_turn_text(m, fmt)}" for m in earlier]
    return "Conversation so far:\n" + "\n".join(lines) + "\n\n" + last


def input_role(cfg: RkllmModelSettings, inp: GenerateInput, native_tools: bool) -> str:
    """RKLLMInput.role of this run: "tool" only when its input is the trailing tool results alone.

    The runtime takes nothing but JSON text with role "tool" (1.3.1's rkllm_run returns -1
    otherwise), so results that follow a transcript of earlier turns (no keep_history), or that
    a release without the tool API (1.2.0, 1.2.1b1) gets, go as the format's text in a user turn.
    """
    _turns, n_results, earlier = _split(inp)
    return "tool" if n_results and native_tools and (cfg.keep_history or not earlier) else "user"


def _split(inp: GenerateInput) -> tuple[list[ChatMessage], int, list[ChatMessage]]:
    """The non-system turns, how many tool results end them, and the turns before the input."""
    turns = [m for m in inp.messages if m.role != "system"]
    n_results = 0
    while n_results < len(turns) and turns[len(turns) - 1 - n_results].role == "tool":
        n_results += 1
    return turns, n_results, turns[: len(turns) - (n_results or 1)]


def _turn_text(m: ChatMessage, fmt: ToolFormat) -> str:
    return fmt.render_call_turn(m) if m.tool_calls else m.content


def _last_input(results: list[ChatMessage], as_tool: bool, fmt: ToolFormat) -> str:
    if not as_tool:
        return "\n".join(fmt.render_tool_result(m) for m in results)
    if len(results) == 1:
        return _json_text(results[0].content)
    return json.dumps([m.content for m in results], ensure_ascii=False)


def _json_text(content: str) -> str:
    """A tool result as JSON text: as it is when it parses as JSON, else as a JSON string."""
    try:
        finitejson.loads(content)
    except (ValueError, RecursionError):
        return json.dumps(content, ensure_ascii=False)
    return content


def choose_format(name: str, cfg: RkllmModelSettings) -> toolcalls.ToolFormat:
    """The model's tool-call format: as configured, or for ``auto`` from what RKLLM lets us see,
    the configured three-part template (the built-in one cannot be read) and the model's names."""
    tpl = cfg.chat_template
    text = None if tpl is None else tpl.system + tpl.prefix + tpl.postfix
    fmt = toolcalls.choose(cfg.tool_format, text, f"{name} {os.path.basename(str(cfg.path))}")
    log.info("tool_format", model=name, format=fmt.name, setting=cfg.tool_format)
    return fmt
