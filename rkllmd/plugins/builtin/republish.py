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

A route with ``sentences = true`` speaks while the model writes: it publishes each whole sentence
as soon as it is complete (rkllmd.sentences: markdown and code left out), one message per
sentence, instead of the final answer. Its ``payload`` is ``json`` (``{"id", "seq", "text"}``) or
a template with ``{text}`` (the sentence), ``{seq}`` (its number, from 0), ``{id}``, ``{model}``,
``{topic}`` and ``{session}``. A cancelled or failed answer's unfinished last sentence is not
sent. ``sentence_max_chars`` and ``sentence_min_chars`` tune the chunker for every such route:

    [plugins.republish]
    routes = [{ topic = "tts/kitchen/say", sentences = true, when_field = "speak" }]
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rkllmd.plugins import (
    MAX_CHARS,
    MIN_CHARS,
    Exchange,
    Final,
    Plugin,
    PluginConfig,
    PluginContext,
    SentenceChunker,
    Token,
    Utterances,
    WrongType,
)
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
SENTENCE_VARIABLES = {"id", "model", "text", "seq", "topic", "session"}
_SPEECH = "republish.sentences"  # Exchange.meta key: the request's _Speech


class Route(PluginConfig):
    topic: str
    payload: str = Field("{text}", description='"json", or a template with {text}, {id}, ...')
    sentences: bool = Field(False, description="each whole sentence as it is written, not the answer")
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

    @model_validator(mode="after")
    def _payload_ok(self) -> Route:
        known = SENTENCE_VARIABLES if self.sentences else VARIABLES
        if self.payload != "json":
            for _, name, _, _ in string.Formatter().parse(self.payload):
                if name is not None and name not in known:
                    where = " in a sentences route" if self.sentences else ""
                    raise ValueError(f"unknown variable {{{name}}}{where}; known: {', '.join(sorted(known))}")
        if self.sentences and self.only == "error":
            raise ValueError('a sentences route publishes while the answer is written: only must be "ok"')
        return self


class Config(PluginConfig):
    routes: list[Route] = Field(default_factory=list)
    sentence_max_chars: int = Field(
        MAX_CHARS, description="sentences routes: cut text without a sentence end"
    )
    sentence_min_chars: int = Field(MIN_CHARS, description="sentences routes: join shorter sentences")

    @model_validator(mode="after")
    def _chunker_ok(self) -> Config:
        SentenceChunker(self.sentence_max_chars, self.sentence_min_chars)  # raises on bad limits
        return self


@dataclass
class _Speech:
    """A request's sentences so far (dispatcher thread)."""

    utterances: Utterances
    seq: int = 0


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


def render_sentence(route: Route, req: Exchange, seq: int, text: str) -> bytes | dict[str, Any]:
    if route.payload == "json":
        return {"id": req.id, "seq": seq, "text": text}
    values = {
        "id": req.id or "",
        "model": req.model or "",
        "text": text,
        "seq": seq,
        "topic": req.topic,
        "session": (req.meta.get("sessions") or {}).get("session") or "",
    }
    return route.payload.format_map(values).encode()


def setup(ctx: PluginContext, config: Config) -> None:
    fields = {r.when_field for r in config.routes if r.when_field}
    for r in config.routes:  # a speaker's topic: a request's reply_to must not make it say JSON
        ctx.reserve(r.topic)

    def preprocess(req: Exchange) -> Exchange:
        flags = req.meta.setdefault("republish", set())
        for f in fields:
            if f in req.payload:
                v = req.payload.pop(f)
                if not isinstance(v, bool):
                    raise WrongType(f"{f} must be true or false")
                if v:
                    flags.add(f)
        return req

    def applies(r: Route, req: Exchange, model: str | None) -> bool:
        if req.command not in r.commands or (r.models and model not in r.models):
            return False
        return not r.when_field or r.when_field in req.meta.get("republish", ())

    speaking = [r for r in config.routes if r.sentences]

    def say(req: Exchange, speech: _Speech, sentences: list[str]) -> None:
        for text in sentences:
            for r in speaking:
                if applies(r, req, req.model):
                    ctx.publish(
                        r.topic, render_sentence(r, req, speech.seq, text), retain=r.retain, qos=r.qos
                    )
            speech.seq += 1

    def route(event: Token | Final) -> None:
        req = event.request
        if isinstance(event, Token):
            speech = req.meta.get(_SPEECH)
            if speech is None and any(applies(r, req, req.model) for r in speaking):
                speech = _Speech(Utterances(config.sentence_max_chars, config.sentence_min_chars))
                req.meta[_SPEECH] = speech
            if speech is not None:
                say(req, speech, speech.utterances.feed(event.delta))
            return
        speech = req.meta.pop(_SPEECH, None)
        if speech is not None and event.ok and event.data.get("finish_reason") != "cancelled":
            say(req, speech, speech.utterances.finish())
        for r in config.routes:
            if r.sentences or (r.only != "all" and r.only != event.status):
                continue
            if applies(r, req, event.data.get("model") or req.model):
                ctx.publish(r.topic, render(r, event), retain=r.retain, qos=r.qos)

    if fields:
        ctx.add_preprocessor(preprocess, commands={c for r in config.routes for c in r.commands})
    ctx.add_router(route, tokens=bool(speaking))  # tokens only for sentence routes


PLUGIN = Plugin(
    name="republish",
    version="1.1.0",
    description="send final answers, their text or their sentences as they are written, to other topics",
    config=Config,
    setup=setup,
)
