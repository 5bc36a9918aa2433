"""A template plugin: copy this file to start your own (docs/PLUGINS.md walks through it).

It uses every hook once:
- a preprocessor that consumes its own request field (``"shout": true``) and rewrites the prompt;
- a router that publishes the last answer on ``<base>/plugins/example/last``;
- an extra topic: a message on ``<base>/plugins/example/ping`` is echoed on ``.../pong``;
- a stats contribution: ``plugins.example.answers`` in ``<base>/stats``;
- ``NotReady``: with ``wait_for`` set, setup is retried until that file exists.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from rkllmd.plugins import (
    Exchange,
    Final,
    Message,
    NotReady,
    Plugin,
    PluginConfig,
    PluginContext,
    Token,
    WrongType,
)


class Config(PluginConfig):
    prefix: str = Field("", description="put in front of every prompt")
    wait_for: Path | None = Field(None, description="setup waits (NotReady) until this file exists")


def setup(ctx: PluginContext, config: Config) -> None:
    """Main thread. Register hooks; everything registered here is undone at teardown."""
    if config.wait_for is not None and not config.wait_for.exists():
        raise NotReady(f"waiting for {config.wait_for}")
    answers = 0

    def preprocess(req: Exchange) -> Exchange:  # ingress thread
        shout = req.payload.pop("shout", False)
        if not isinstance(shout, bool):
            raise WrongType("shout must be true or false")
        prompt = req.payload.get("prompt")
        if isinstance(prompt, str):
            prompt = config.prefix + prompt
            req.payload["prompt"] = prompt.upper() if shout else prompt
        return req

    def route(event: Token | Final) -> None:  # dispatcher thread
        nonlocal answers
        if isinstance(event, Final) and event.ok and event.request.command == "generate":
            answers += 1
            ctx.publish(ctx.topic("last"), {"id": event.request.id, "text": event.text})

    def ping(msg: Message) -> None:  # ingress thread
        ctx.publish(ctx.topic("pong"), msg.payload)

    ctx.add_preprocessor(preprocess)
    ctx.add_router(route)
    ctx.subscribe(ctx.topic("ping"), ping)
    ctx.add_stats(lambda: {"answers": answers})


PLUGIN = Plugin(
    name="example",
    version="1.0.0",
    description="the template to copy: one of each hook",
    config=Config,
    setup=setup,
)
