"""Prompt templates: a system prompt and a prompt template per model, or by name.

A Home Assistant automation sends only its variables, e.g.
``{"template": "kitchen", "area": "kitchen", "question": "Is the oven on?"}`` on
``<base>/request/generate``, or ``{"area": ..., "question": ...}`` on the template's own topic
``<base>/plugins/templates/<name>``; the template fills ``prompt``, ``system`` and ``model``.

Which template applies: the request's ``template`` field, else the one configured for the
request's model (``[plugins.templates.models.<model>]``), else none. The variables a template
uses are taken out of the request, so the remaining fields are checked as usual (a typo is still
a ``bad_request``). ``{prompt}`` is the request's own prompt. A missing variable is an error reply.
"""

from __future__ import annotations

import json
import string
from typing import Any

from pydantic import Field, field_validator

from rkllmd.plugins import (
    Exchange,
    Message,
    Plugin,
    PluginConfig,
    PluginContext,
    RequestError,
    UnknownModel,
    WrongType,
    resolve,
)


def _fields(template: str) -> list[str]:
    names = []
    for _, name, spec, conv in string.Formatter().parse(template):
        if name is None:
            continue
        if not name.isidentifier() or spec or conv:
            raise ValueError(
                f"{{{name}}}: use plain {{variable}} names only (no attributes, indexes or formats)"
            )
        names.append(name)
    return names


class Template(PluginConfig):
    prompt: str | None = Field(None, description="prompt with {variables}; none keeps the request's prompt")
    system: str | None = Field(None, description="system prompt with {variables}; a request's own wins")
    model: str | None = Field(None, description="model to use when the request names none")

    @field_validator("prompt", "system")
    @classmethod
    def _parses(cls, v: str | None) -> str | None:
        if v is not None:
            _fields(v)
        return v


class Config(PluginConfig):
    templates: dict[str, Template] = Field(default_factory=dict, description="named templates")
    models: dict[str, Template] = Field(default_factory=dict, description="the template of each model")
    topics: bool = Field(True, description="serve each named template on <base>/plugins/templates/<name>")


def _render(name: str, tpl: Template, req: Exchange) -> None:
    p = req.payload
    used: set[str] = set()

    def fill(text: str) -> str:
        values: dict[str, str] = {}
        for var in _fields(text):
            if var not in p:
                raise RequestError(f"template {name!r} needs the field {var!r}")
            value = p[var]
            if isinstance(value, (dict, list)) or value is None:
                raise WrongType(f"template {name!r}: field {var!r} must be a string or number")
            values[var] = str(value)
            used.add(var)
        return text.format_map(values)

    prompt = fill(tpl.prompt) if tpl.prompt is not None else None
    system = fill(tpl.system) if tpl.system is not None else None
    for var in used:
        p.pop(var, None)
    if prompt is not None:
        p["prompt"] = prompt
    if system is not None and "system" not in p:
        p["system"] = system
    if tpl.model is not None and "model" not in p and req.topic_model is None:
        p["model"] = tpl.model
    req.meta["templates"] = {"template": name}


def setup(ctx: PluginContext, config: Config) -> None:
    unknown = [m for m in config.models if m not in ctx.settings.models]
    if unknown:
        raise ValueError(f"templates for unknown models: {', '.join(unknown)}")

    def preprocess(req: Exchange) -> Exchange:
        name = req.payload.pop("template", None)
        if name is not None:
            if not isinstance(name, str):
                raise WrongType("template must be a string")
            if name not in config.templates:
                known = ", ".join(config.templates) or "none"
                raise RequestError(f"unknown template {name!r} (configured: {known})")
            _render(name, config.templates[name], req)
            return req
        asked = req.payload.get("model")
        if asked and not isinstance(asked, str):
            return req  # let validation say what is wrong
        try:
            model = resolve(ctx.settings, asked or None, req.topic_model, None).model
        except UnknownModel:
            return req  # unknown_model comes from validation
        if model in config.models:
            _render(f"models.{model}", config.models[model], req)
        return req

    ctx.add_preprocessor(preprocess)

    if config.topics:
        for name in config.templates:

            def on_message(msg: Message, name: str = name) -> None:
                # Re-enters the daemon as a generate request naming this template.
                text = msg.payload.decode("utf-8", "replace")
                body: Any
                try:
                    body = json.loads(text) if text.lstrip().startswith("{") else {"prompt": text}
                except json.JSONDecodeError:
                    body = None
                if isinstance(body, dict):
                    body["template"] = name
                    payload = json.dumps(body).encode()
                else:  # let the daemon answer bad_json as for any request
                    payload = msg.payload
                ctx.inject(
                    Message(
                        ctx.topics.request("generate"),
                        payload,
                        msg.response_topic,
                        msg.correlation_data,
                        msg.received_at,
                    )
                )

            ctx.subscribe(ctx.topic(name), on_message)


PLUGIN = Plugin(
    name="templates",
    version="1.0.0",
    description="system prompt and prompt template per model or by name, with variables from the request",
    config=Config,
    setup=setup,
)
