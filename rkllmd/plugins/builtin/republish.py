"""Republish: send final answers (or just their text) to other topics, e.g. text-to-speech.

    [plugins.republish]
    routes = [
      { topic = "tts/kitchen/say", payload = "{text}", only = "ok" },
      { topic = "log/llm", payload = "json", retain = true, qos = 1 },
    ]

``payload`` is ``json`` (the whole reply as the requester got it) or a template with
``{id}``, ``{model}``, ``{text}``, ``{finish_reason}``, ``{status}``, ``{code}``, ``{error}``,
``{completion_tokens}``, ``{topic}`` (the request topic) and ``{session}``. ``only`` picks
``ok`` answers, ``error`` replies, or ``all``; ``models`` limits a route to some models;
``when_field`` sends only for requests that carried that field set to true (the field is
consumed, so ``{"prompt": "...", "speak": true}`` is a valid request).
"""

from __future__ import annotations

import string
from typing import Any, Literal

from pydantic import Field, field_validator

from rkllmd.errors import WrongType
from rkllmd.plugins import Final, Plugin, PluginConfig, PluginContext, Request, Token
from rkllmd.protocol import check_publish_topic

VARIABLES = {
    "id",
    "model",
    "text",
    "finish_reason",
    "status",
    "code",
    "error",
    "completion_tokens",
    "topic",
    "session",
}


class Route(PluginConfig):
    topic: str
    payload: str = Field("{text}", description='"json", or a template with {text}, {id}, ...')
    only: Literal["ok", "error", "all"] = "ok"
    commands: list[str] = Field(default_factory=lambda: ["generate"])
    models: list[str] = Field(default_factory=list, description="empty = every model")
    when_field: str | None = Field(None, description="route only requests with this field set to true")
    retain: bool = False
    qos: Literal[0, 1, 2] = 0

    @field_validator("topic")
    @classmethod
    def _topic_ok(cls, v: str) -> str:
        check_publish_topic(v, "topic")
        return v

    @field_validator("payload")
    @classmethod
    def _payload_ok(cls, v: str) -> str:
        if v != "json":
            for _, name, _, _ in string.Formatter().parse(v):
                if name is not None and name not in VARIABLES:
                    raise ValueError(f"unknown variable {{{name}}}; known: {', '.join(sorted(VARIABLES))}")
        return v


class Config(PluginConfig):
    routes: list[Route] = Field(default_factory=list)


def render(route: Route, final: Final) -> bytes | dict[str, Any]:
    if route.payload == "json":
        return final.as_reply()
    session = (final.request.meta.get("sessions") or {}).get("session")
    values = {
        "id": final.request.id or "",
        "model": final.data.get("model") or final.request.model or "",
        "text": final.text,
        "finish_reason": final.data.get("finish_reason") or "",
        "status": final.status,
        "code": final.code or "",
        "error": final.error or "",
        "completion_tokens": (final.data.get("usage") or {}).get("completion_tokens") or 0,
        "topic": final.request.topic,
        "session": session or "",
    }
    return route.payload.format_map(values).encode()


def setup(ctx: PluginContext, config: Config) -> None:
    fields = {r.when_field for r in config.routes if r.when_field}

    def preprocess(req: Request) -> Request:
        flags = req.meta.setdefault("republish", set())
        for f in fields:
            if f in req.payload:
                v = req.payload.pop(f)
                if not isinstance(v, bool):
                    raise WrongType(f"{f} must be true or false")
                if v:
                    flags.add(f)
        return req

    def route(event: Token | Final) -> None:
        if not isinstance(event, Final):
            return
        req = event.request
        for r in config.routes:
            if req.command not in r.commands or (r.only != "all" and r.only != event.status):
                continue
            model = event.data.get("model") or req.model
            if r.models and model not in r.models:
                continue
            if r.when_field and r.when_field not in req.meta.get("republish", ()):
                continue
            ctx.publish(r.topic, render(r, event), retain=r.retain, qos=r.qos)

    if fields:
        ctx.add_preprocessor(preprocess, commands={c for r in config.routes for c in r.commands})
    ctx.add_router(route)


PLUGIN = Plugin(
    name="republish",
    version="1.0.0",
    description="send final answers or their text to other topics",
    config=Config,
    setup=setup,
)
