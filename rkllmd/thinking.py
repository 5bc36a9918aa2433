"""A thinking model's thought apart from its answer: the streaming splitter, and history without it.

Qwen3, QwQ and DeepSeek-R1 write their reasoning first, in ``<think>…</think>``, then the answer.
The inference loop puts a :class:`ThoughtSplitter` in front of the tool-call parser for every
run (rkllmd/jobs.py), so the thought never reaches ``text``, the sentence stream or the tool-call
parser: it travels beside the answer (``Token.thinking``, the reply's ``thinking``).
DeepSeek-R1-Distill's template opens the block in the prompt itself, so its output starts
inside the thought and shows only the closing tag: ``Thinking.starts_open`` says so.

A block is recognised only at the start of the output (after whitespace): models think before
they answer, and a tag quoted later in an answer stays text. Nothing is lost and little is held:
only a possible tag, and whitespace at the edges of the thought that is trimmed (as Ollama
does) when the tag follows. Pure code, no threads: it runs on the token sink's thread.
docs/THINKING.md describes the whole feature.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from rkllmd.generation import ChatMessage, GenerateInput, Thinking

if TYPE_CHECKING:
    from rkllmd.config_base import ModelCommon


class _State(Enum):
    START = 0  # nothing but whitespace yet: a block may still open
    THOUGHT = 1  # inside the block
    AFTER = 2  # the block closed; the answer's leading whitespace is dropped
    ANSWER = 3  # everything from here is answer text


def _partial_tail(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class ThoughtSplitter:
    """Feed text deltas; get back ``(thought, answer)``, each as early as it is safe to say."""

    def __init__(self, spec: Thinking) -> None:
        self.open, self.close = spec.open_tag, spec.close_tag
        self._state = _State.THOUGHT if spec.starts_open else _State.START
        self._buf = ""
        self._started = False  # some thought text went out (its leading whitespace is trimmed)
        #: deltas fed while inside the block: the measure of ``max_thinking_tokens``
        self.thought_deltas = 0
        #: the output ended (or was cut) inside the block: it never closed
        self.unclosed = False

    @property
    def in_thought(self) -> bool:
        return self._state is _State.THOUGHT

    def feed(self, delta: str) -> tuple[str, str]:
        """Take one delta; return the thought and the answer text it completes."""
        if self._state is _State.ANSWER:  # the common case, after the block: no copy, no search
            return "", delta
        if self._state is _State.THOUGHT:
            self.thought_deltas += 1
        self._buf += delta
        thought: list[str] = []
        while True:
            buf = self._buf
            if self._state is _State.START:
                body = buf.lstrip()
                if body.startswith(self.open):
                    self._buf = body[len(self.open) :]
                    self._state = _State.THOUGHT
                    continue
                if not body or self.open.startswith(body):
                    return "".join(thought), ""  # still only whitespace, or part of the tag
                self._buf, self._state = "", _State.ANSWER
                return "".join(thought), buf  # unchanged: a model that does not think
            if self._state is _State.THOUGHT:
                i = buf.find(self.close)
                if i >= 0:
                    thought.append(self._thought(buf[:i].rstrip()))
                    self._buf, self._state = buf[i + len(self.close) :], _State.AFTER
                    continue
                # Hold a possible closing tag, and the whitespace before it (trimmed if it closes).
                hold = _partial_tail(buf, self.close)
                keep = len(buf[: len(buf) - hold].rstrip())
                thought.append(self._thought(buf[:keep]))
                self._buf = buf[keep:]
                return "".join(thought), ""
            # AFTER: the answer starts at its first non-whitespace character
            rest = buf.lstrip()
            self._buf = ""
            if rest:
                self._state = _State.ANSWER
            return "".join(thought), rest

    def finish(self) -> tuple[str, str]:
        """The end of the output: what is still held, as thought or as answer."""
        rest, self._buf = self._buf, ""
        if self._state is _State.THOUGHT:
            self.unclosed = True
            return self._thought(rest.rstrip()), ""
        if self._state is _State.START:
            return "", rest
        return "", ""  # AFTER: only whitespace was held; ANSWER holds nothing

    def _thought(self, text: str) -> str:
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        return text


def strip_thought(content: str, spec: Thinking) -> str:
    """An earlier assistant turn's text without its thought: a leading ``<think>…</think>``
    block, or (a model that starts inside the thought) everything up to the first closing tag.
    Text without a closing tag is returned as it is: a cut-off thought is not told from an answer."""
    if spec.close_tag not in content:
        return content  # no thought ended here; an open tag alone may be the answer quoting it
    opened = content.lstrip().startswith(spec.open_tag)
    splitter = ThoughtSplitter(replace(spec, starts_open=not opened))
    _, answer = splitter.feed(content)
    _, tail = splitter.finish()
    return answer + tail


def without_thought(messages: Iterable[ChatMessage], spec: Thinking) -> tuple[ChatMessage, ...]:
    """``messages`` with the thought taken out of every assistant turn: a client that replays
    the model's reasoning (Home Assistant sends back ``thinking``; others the raw text) must not
    have it prefilled again, which would cost prompt tokens and teach the model its own tags."""
    out = []
    for m in messages:
        if m.role == "assistant" and m.content:
            text = strip_thought(m.content, spec)
            if text != m.content:
                m = replace(m, content=text)
        out.append(m)
    return tuple(out)


# Families that think, as their names say (the model's or its file's, lower-cased; docs/THINKING.md):
# QwQ, DeepSeek-R1 and its distills, every "-Thinking" model, and Qwen3's hybrid models, but not
# Qwen3's "Instruct" releases (2507, VL) nor Qwen3-Coder, which have no thinking mode.
_THINKERS = re.compile(r"qwq|deepseek-r1|thinking|qwen3(?!.*(instruct|coder))")


def can_think(name: str, cfg: ModelCommon) -> bool:
    """Whether the model ``name`` can think (Ollama's ``thinking`` capability): a chat model's
    ``thinks`` when set; else a chat model whose settings describe its thought (``thinking_starts_open``,
    ``max_thinking_tokens``, an RKLLM template's ``no_thinking``) or whose family thinks."""
    if cfg.kind != "chat" or cfg.thinks is not None:
        return cfg.kind == "chat" and bool(cfg.thinks)
    template: Any = getattr(cfg, "chat_template", None)  # RKLLM's own template, if configured
    if cfg.thinking_starts_open or cfg.max_thinking_tokens or (template and template.no_thinking):
        return True
    path = getattr(cfg, "path", None)
    return bool(_THINKERS.search(f"{name} {path.name if path else ''}".lower()))


def opened_by_prompt(spec: Thinking, facts: Mapping[str, Any]) -> Thinking:
    """``spec`` with ``starts_open`` also when the loaded runtime found that its prompt ends
    inside the block (``facts``: its describe(); llama.cpp reads the GGUF template at load)."""
    opens = facts.get("thought_opens_in_prompt") or {}
    if spec.starts_open or not opens.get("think" if spec.on else "no_think"):
        return spec
    return replace(spec, starts_open=True)


def with_model_thinking(inp: GenerateInput, cfg: ModelCommon) -> GenerateInput:
    """``inp`` as it runs on the model ``cfg`` (admission, on the ingress thread): the model's
    thought format beside the request's switch, the request's thought cap else the model's, and
    the history without earlier thought."""
    open_tag, close_tag = cfg.thinking_tags
    spec = replace(
        inp.thinking,
        open_tag=open_tag,
        close_tag=close_tag,
        starts_open=cfg.thinking_starts_open,
        max_tokens=inp.thinking.max_tokens or cfg.max_thinking_tokens,
    )
    return replace(inp, thinking=spec, messages=without_thought(inp.messages, spec))
