"""Sessions: conversation history per ``session`` id, trimmed to the model's context.

A generate request with ``"session": "kitchen-tablet"`` gets the earlier turns of that session
put before its own (as ``messages``), and its answer is added to the session when it finishes
well. The history is trimmed, oldest turns first, so that history + prompt + ``max_tokens`` fit
the model's context (``max_context_len``), counted with the model's own tokenizer (an estimate,
UTF-8 bytes / 3, when the model has none). A session idle for ``idle_timeout_s`` is forgotten.

Clear a session: ``"session_reset": true`` in a request (starts it afresh), or publish its id
(or ``{"session": "..."}``) on ``<base>/plugins/sessions/clear``; the answer goes to the v5
response topic, else ``<base>/plugins/sessions/response``.

Two requests of one session queued at once both see the history as it was when they arrived.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from rkllmd.plugins import (
    Exchange,
    Final,
    Message,
    Plugin,
    PluginConfig,
    PluginContext,
    RequestError,
    Token,
    UnknownModel,
    WrongType,
    reply_body,
    resolve,
)

SESSION_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class Config(PluginConfig):
    idle_timeout_s: float = Field(1800.0, gt=0, description="forget a session idle this long")
    max_sessions: int = Field(256, ge=1, description="least recently used sessions beyond this are dropped")
    max_turns: int = Field(50, ge=1, description="turns (user + assistant) kept per session at most")
    reserve_tokens: int = Field(32, ge=0, description="kept free for the chat template's own tokens")
    per_message_tokens: int = Field(4, ge=0, description="template tokens counted for each message")


@dataclass
class Session:
    messages: list[dict[str, str]] = field(default_factory=list)
    last_used: float = field(default_factory=time.monotonic)


class Store:
    """Sessions by id; ingress and dispatcher threads both use it, under one lock."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._s: OrderedDict[str, Session] = OrderedDict()
        self.lock = threading.Lock()

    def _expire(self, now: float) -> None:
        for sid in [k for k, v in self._s.items() if now - v.last_used > self.config.idle_timeout_s]:
            del self._s[sid]

    def history(self, sid: str) -> list[dict[str, str]]:
        with self.lock:
            self._expire(time.monotonic())
            s = self._s.get(sid)
            return list(s.messages) if s else []

    def append(self, sid: str, turns: list[dict[str, str]]) -> None:
        with self.lock:
            now = time.monotonic()
            self._expire(now)
            s = self._s.pop(sid, None) or Session()
            s.messages.extend(turns)
            del s.messages[: max(0, len(s.messages) - self.config.max_turns)]
            s.last_used = now
            self._s[sid] = s
            while len(self._s) > self.config.max_sessions:
                self._s.popitem(last=False)

    def clear(self, sid: str) -> bool:
        with self.lock:
            return self._s.pop(sid, None) is not None

    def __len__(self) -> int:
        with self.lock:
            self._expire(time.monotonic())
            return len(self._s)


def trim(
    history: list[dict[str, str]], new: list[dict[str, str]], budget: int, count: Any, per_message: int
) -> list[dict[str, str]]:
    """The newest part of ``history`` that fits ``budget`` tokens together with ``new``.

    Whole turns are dropped from the front, and a leading assistant turn never stays alone.
    """

    def cost(m: dict[str, str]) -> int:
        return int(count(m["content"])) + per_message

    left = budget - sum(cost(m) for m in new)
    kept: list[dict[str, str]] = []
    for m in reversed(history):
        c = cost(m)
        if c > left:
            break
        kept.append(m)
        left -= c
    kept.reverse()
    while kept and kept[0]["role"] == "assistant":
        kept.pop(0)
    return kept


def setup(ctx: PluginContext, config: Config) -> None:
    store = Store(config)

    def counter(model: str) -> Any:
        def count(text: str) -> int:
            n = ctx.count_tokens(model, text)
            return n if n is not None else -(-len(text.encode()) // 3)

        return count

    def preprocess(req: Exchange) -> Exchange:  # ingress thread
        p = req.payload
        sid = p.pop("session", None)
        reset = p.pop("session_reset", False)
        if not isinstance(reset, bool):
            raise WrongType("session_reset must be true or false")
        if sid is None:
            if reset:
                raise RequestError("session_reset needs a session")
            return req
        if not isinstance(sid, str) or not SESSION_RE.match(sid):
            raise RequestError("session must be 1-64 characters of [A-Za-z0-9_.:-]")
        if reset:
            store.clear(sid)
        if isinstance(p.get("messages"), list):
            new = [m for m in p["messages"] if isinstance(m, dict)]
        elif isinstance(p.get("prompt"), str):
            new = [{"role": "user", "content": p["prompt"]}]
        else:
            return req  # let validation say what is wrong
        if not all(isinstance(m.get("content"), str) and isinstance(m.get("role"), str) for m in new):
            return req
        asked_model, asked_max = p.get("model"), p.get("max_tokens")
        if asked_model and not isinstance(asked_model, str):
            return req  # let validation say what is wrong
        try:
            target = resolve(
                ctx.settings,
                asked_model or None,
                req.topic_model,
                asked_max if isinstance(asked_max, int) else None,
            )
        except UnknownModel:
            return req  # unknown_model comes from validation
        model, max_tokens = target.model, target.max_tokens
        mcfg = ctx.settings.models[model]
        count = counter(model)
        budget = ctx.context_length(model) - max_tokens - config.reserve_tokens
        system = p.get("system") if isinstance(p.get("system"), str) else mcfg.system_prompt
        if system:
            budget -= count(system) + config.per_message_tokens
        history = trim(store.history(sid), new, budget, count, config.per_message_tokens)
        p.pop("prompt", None)
        p["messages"] = [*history, *new]
        req.meta["sessions"] = {"session": sid, "turns": [dict(m) for m in new], "history": len(history)}
        return req

    def route(event: Token | Final) -> None:  # dispatcher thread
        if not isinstance(event, Final) or not event.ok:
            return
        meta = event.request.meta.get("sessions")
        if meta is None or event.data.get("finish_reason") == "cancelled":
            return
        store.append(meta["session"], [*meta["turns"], {"role": "assistant", "content": event.text}])

    def on_clear(msg: Message) -> None:  # ingress thread
        text = msg.payload.decode("utf-8", "replace").strip()
        sid: Any = text
        if text.startswith("{"):
            try:
                sid = json.loads(text).get("session")
            except (json.JSONDecodeError, AttributeError):
                sid = None
        if isinstance(sid, str) and SESSION_RE.match(sid):
            body = reply_body("ok", {"session": sid, "cleared": store.clear(sid)}, None, None, None)
        else:
            body = reply_body("error", {}, "bad_request", "give a session id", None)
        to = msg.response_topic
        if to is None or ctx.topics.in_namespace(to):  # never onto rkllmd's own topics (PROTOCOL.md)
            to = ctx.topic("response")
        ctx.publish(to, body)

    ctx.add_preprocessor(preprocess)
    ctx.add_router(route, tokens=False)  # final replies only
    ctx.subscribe(ctx.topic("clear"), on_clear)
    ctx.add_stats(lambda: {"sessions": len(store)})


PLUGIN = Plugin(
    name="sessions",
    version="1.0.0",
    description="conversation history per session id, trimmed to the model's context",
    config=Config,
    setup=setup,
)
