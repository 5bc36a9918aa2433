"""What the end-to-end tool-format tests share: rkllmd on the C runtime double, its model set to
one family's ``tool_format``, the double saying that family's call text from a script, both HTTP
plugins on; and the calls and content as the ``openai`` and ``ollama`` clients read them."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ollama
import openai

from tests.e2e.conftest import start_with_both_apis
from tests.helpers import Broker, DaemonProc

#: one call as a test compares it: the tool's name and its arguments
Call = tuple[str, dict[str, Any]]


@dataclass
class Served:
    fmt: str
    base: str
    proc: DaemonProc
    broker: Broker
    openai: openai.OpenAI
    ollama: ollama.Client


def serve_format(
    fmt: str,
    lines: Sequence[tuple[str, str, str]],
    tmp: Path,
    broker: Broker,
    lib: Path,
    base: str,
) -> Iterator[Served]:
    """rkllmd with its model set to ``fmt``, the double saying each ``(role, needle, text)`` of
    ``lines`` (FAKE_RKLLM_SCRIPT, the text base64) when a prompt holds the needle; for a module
    fixture, which stops the daemon cleanly after its tests."""
    script = tmp / "script.tsv"
    script.write_text("".join(f"{r}\t{n}\t{base64.b64encode(s.encode()).decode()}\n" for r, n, s in lines))
    d, openai_port, ollama_port = start_with_both_apis(
        tmp, broker, lib, base, model={"tool_format": fmt}, env={"FAKE_RKLLM_SCRIPT": str(script)}
    )
    yield Served(
        fmt,
        base,
        d,
        broker,
        openai.OpenAI(base_url=f"http://127.0.0.1:{openai_port}/v1", api_key="x", max_retries=0, timeout=30),
        ollama.Client(host=f"http://127.0.0.1:{ollama_port}", timeout=30),
    )
    assert d.stop() == 0


def openai_chat(
    served: Served, messages: Any, tools: Any, stream: bool
) -> tuple[str, list[Call], str | None]:
    """A chat completion through the ``openai`` client: its content, its calls in order (streamed
    ones put together from their pieces) and its finish reason."""
    if not stream:
        answer = served.openai.chat.completions.create(model="fake", messages=messages, tools=tools)
        choice = answer.choices[0]
        fns = [c.function for c in choice.message.tool_calls or []]  # type: ignore[union-attr]
        calls = [(fn.name, json.loads(fn.arguments)) for fn in fns]
        return choice.message.content or "", calls, choice.finish_reason
    content, names, args, finish = "", dict[int, str](), dict[int, str](), None
    for chunk in served.openai.chat.completions.create(
        model="fake", messages=messages, tools=tools, stream=True
    ):
        for c in chunk.choices:
            content += c.delta.content or ""
            for tc in c.delta.tool_calls or []:
                names[tc.index] = names.get(tc.index, "") + (tc.function.name or "" if tc.function else "")
                args[tc.index] = args.get(tc.index, "") + (tc.function.arguments or "" if tc.function else "")
            finish = c.finish_reason or finish
    return content, [(names[i], json.loads(args[i])) for i in sorted(names)], finish


def ollama_chat(served: Served, messages: Any, tools: Any, stream: bool) -> tuple[str, list[Call]]:
    """A chat through the ``ollama`` client, as Home Assistant reads it: the content (what HA
    would speak) and the calls in ``message.tool_calls``; the last part must say done."""
    if stream:
        parts = list(served.ollama.chat(model="fake", messages=messages, tools=tools, stream=True))
    else:
        parts = [served.ollama.chat(model="fake", messages=messages, tools=tools, stream=False)]
    assert parts[-1].done
    content = "".join(p.message.content or "" for p in parts)
    calls = [(c.function.name, dict(c.function.arguments)) for p in parts for c in p.message.tool_calls or []]
    return content, calls
