"""A kit to test a plugin without a broker or a model.

    from rkllmd.testing import PluginHarness

    def test_greets() -> None:
        with PluginHarness("example", {"greeting": "Hi"}) as h:
            req = h.preprocess({"name": "Ada", "prompt": "hello"})
            assert req.payload["prompt"].startswith("Hi")
            h.finish(req, "Hello Ada!")
            assert h.published("rkllmd/plugins/example/last")[-1].json()["text"] == "Hello Ada!"

The harness runs the real :class:`rkllmd.plugins.PluginHost` (the same chains, status topics
and error wrapping as the daemon), the daemon's own admission (``rkllmd.ingress.admit_or_raise``)
and reply data (``rkllmd.protocol``), against :class:`FakeServices`, which records what a plugin
publishes and lets a test play the daemon: send messages to plugin topics, finish requests,
set the stats the plugin sees. Everything runs on the calling thread.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import paho.mqtt.client as mqtt
from pydantic import BaseModel

from rkllmd import ingress, protocol
from rkllmd.commands import COMMANDS
from rkllmd.errors import NotFound
from rkllmd.generation import GenerateInput
from rkllmd.plugins import Exchange, Final, Message, Plugin, PluginHost, Token, load_plugin
from rkllmd.protocol import Topics
from rkllmd.settings import Settings


@dataclass(frozen=True)
class Published:
    """One message a plugin published."""

    topic: str
    payload: bytes
    qos: int | None
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)

    @property
    def text(self) -> str:
        return self.payload.decode()


def word_count(text: str) -> int:
    """The kit's default tokenizer: one token per word or punctuation mark."""
    return len(re.findall(r"\w+|[^\w\s]", text))


@dataclass
class FakeServices:
    """The daemon as a plugin sees it, recording every call (implements plugins.Services)."""

    settings: Settings
    topics: Topics
    count: Callable[[str, str], int | None] = lambda model, text: word_count(text)
    published: list[Published] = field(default_factory=list)
    retained: dict[str, bytes] = field(default_factory=dict)
    subscriptions: dict[str, int] = field(default_factory=dict)
    current_stats: dict[str, Any] = field(default_factory=dict)
    stats_refreshes: int = 0
    cancelled: list[str] = field(default_factory=list)
    injected: list[Message] = field(default_factory=list)

    def publish(self, topic: str, payload: bytes, *, qos: int | None, retain: bool) -> None:
        protocol.check_publish_topic(topic, "topic")
        self.published.append(Published(topic, payload, qos, retain))
        if retain:
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)

    def subscribe(self, topic: str, qos: int | None) -> Callable[[], None]:
        self.subscriptions[topic] = self.subscriptions.get(topic, 0) + 1

        def unsubscribe() -> None:
            self.subscriptions.pop(topic, None)

        return unsubscribe

    def stats(self) -> dict[str, Any]:
        return {
            "requests": 0,
            "errors": 0,
            "completion_tokens": 0,
            "queue_depth": 0,
            "busy": False,
            "running": None,
            "loaded_model": self.settings.default,
            **self.current_stats,
        }

    def refresh_stats(self) -> None:
        self.stats_refreshes += 1

    def cancel(self, request_id: str) -> str:
        if self.stats().get("running") != request_id:
            raise NotFound(f"no queued or running request with id {request_id!r}")
        self.cancelled.append(request_id)
        return "running"

    def inject(self, msg: Message) -> None:
        self.injected.append(msg)

    def count_tokens(self, model: str, text: str) -> int | None:
        return self.count(model, text)


class PluginHarness:
    """One plugin (by name or as a :class:`Plugin`) set up on fake services."""

    def __init__(
        self,
        plugin: str | Plugin,
        config: dict[str, Any] | BaseModel | None = None,
        *,
        settings: Settings | None = None,
        count_tokens: Callable[[str, str], int | None] | None = None,
    ) -> None:
        self.settings = settings or Settings()
        folders = self.settings.plugins.folders
        self.plugin = load_plugin(plugin, folders) if isinstance(plugin, str) else plugin
        if isinstance(config, BaseModel):
            self.config = config
        else:
            self.config = self.plugin.config.model_validate(config or {})
        self.topics = Topics(self.settings.mqtt.base_topic)
        self.services = FakeServices(self.settings, self.topics)
        if count_tokens is not None:
            self.services.count = count_tokens
        self.host = PluginHost(self.services, [(self.plugin, self.config)], remove_disabled=False)
        self.host.retry_initial_s = 0.01

    # lifecycle

    def start(self) -> PluginHarness:
        self.host.start()
        return self

    def stop(self) -> None:
        self.host.stop()

    def __enter__(self) -> PluginHarness:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def state(self) -> str:
        return self.host.status()[self.plugin.name]

    def status(self) -> dict[str, Any]:
        """The plugin's retained status message."""
        raw = self.services.retained.get(f"{self.topics.base}/plugins/{self.plugin.name}/status")
        return json.loads(raw) if raw else {}

    # requests

    def request(
        self,
        payload: dict[str, Any] | str,
        command: str = "generate",
        topic: str | None = None,
        *,
        local: bool = False,
        key: str | None = None,
    ) -> Exchange:
        """An Exchange as the daemon builds it from a payload (JSON object or plain text); ``local``:
        as from a plugin's LocalMessage (answered to routers only; "local" routers see its tokens),
        whose ``key`` the daemon puts on the reply's address (see :meth:`local_request`)."""
        raw = payload if isinstance(payload, str) else json.dumps(payload)
        topic = topic or self.topics.request(command)
        cmd, topic_model = self.topics.parse_request_topic(topic, COMMANDS)
        obj = protocol.decode_payload(raw.encode(), cmd, self.settings.limits.max_payload_bytes)
        response = self.topics.response(cmd.name)
        address = protocol.Address(response, local=True, key=key) if local else None
        return Exchange(
            command=cmd.name,
            topic=topic,
            payload=obj,
            topic_model=topic_model,
            original=dict(obj),
            address=address,
        )

    def local_request(self, msg: protocol.LocalMessage) -> Exchange:
        """An Exchange as the daemon's ingress admits a LocalMessage a plugin injected (the
        preprocessors, the checks, its id and model; its key on the address); raises the RkllmdError
        the daemon would answer the plugin's router with."""
        return ingress.admit_or_raise(msg, self._gate(self.host.preprocess))

    def preprocess(
        self, payload: dict[str, Any] | str | Exchange, command: str = "generate", topic: str | None = None
    ) -> Exchange:
        """Admit a request as the daemon's ingress does: the preprocessor chain, then validation, its
        id and model (an Exchange: its topic and payload as they would arrive, and its ``meta``);
        raises the RkllmdError the daemon would reply with."""
        req = payload if isinstance(payload, Exchange) else self.request(payload, command, topic)

        def chain(ex: Exchange) -> Exchange:
            ex.meta.update(req.meta)
            return self.host.preprocess(ex)

        return ingress.admit_or_raise(self._incoming(req), self._gate(chain))

    def generate_input(self, req: Exchange) -> GenerateInput:
        """What the inference loop would be asked to run for a generate request: an admitted one's
        own, else (an Exchange from :meth:`request`) its payload admitted as it is, no preprocessor
        run; raises the RkllmdError the daemon would reply with."""
        if req.inp is None:
            req = ingress.admit_or_raise(self._incoming(req), self._gate(lambda ex: ex))
        assert req.inp is not None, f"a {req.command} request runs no generation"
        return req.inp

    def _gate(self, preprocess: Callable[[Exchange], Exchange]) -> ingress.Gate:
        return ingress.Gate(self.settings, self.topics, preprocess, reserved=self.host.reserved)

    def _incoming(self, req: Exchange) -> protocol.Incoming:
        """The message an Exchange came in: its topic and its payload's bytes (a LocalMessage's key)."""
        raw = json.dumps(req.payload).encode()
        if req.address is not None and req.address.local:
            return protocol.LocalMessage(req.topic, raw, key=req.address.key)
        return protocol.Incoming(req.topic, raw)

    def stream(self, req: Exchange, deltas: Iterable[str], thinking: Iterable[str] = ()) -> None:
        """Route ``req``'s tokens: the pieces of a thinking model's thought first, then the text."""
        tokens = [Token(req, 0, "", t) for t in thinking] + [Token(req, 0, d) for d in deltas]
        for seq, tok in enumerate(tokens):
            self.host.route(Token(req, seq, tok.delta, tok.thinking))

    def finish(
        self,
        req: Exchange,
        text: str = "",
        *,
        status: Literal["ok", "error"] = "ok",
        code: str | None = None,
        error: str | None = None,
        finish_reason: str = "stop",
        data: dict[str, Any] | None = None,
    ) -> Final:
        """Route the final reply of ``req`` through the routers, as the dispatcher would: its data
        as the loop builds it (a token a word of ``text``), unless ``data`` is given."""
        if data is None:
            n = word_count(text)
            data = (
                protocol.generation_data(req.model, text, finish_reason, None, n, {})
                if status == "ok"
                else protocol.partial_data(req.model, text if COMMANDS[req.command].generates else None, n)
            )
        final = Final(req, status, data, code, error)
        self.host.route(final)
        return final

    # messages and what was published

    def message(
        self, topic: str, payload: bytes | str | dict[str, Any] = b"", response_topic: str | None = None
    ) -> None:
        """Deliver a message to the plugin's subscriptions (as the ingress thread would)."""
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        data = payload.encode() if isinstance(payload, str) else payload
        if not self.host.handles(topic):
            raise AssertionError(f"no plugin subscription matches {topic!r}")
        self.host.deliver(Message(topic, data, response_topic, None, time.monotonic()))

    def published(self, topic_filter: str = "#") -> list[Published]:
        return [p for p in self.services.published if mqtt.topic_matches_sub(topic_filter, p.topic)]

    def stats(self) -> dict[str, Any]:
        """The ``plugins`` part of the stats topic."""
        return self.host.stats()

    def wait(self, pred: Callable[[], bool], timeout: float = 2.0) -> bool:
        """Poll ``pred`` (e.g. for a timer or retry to run) until true or ``timeout``."""
        return wait_until(pred, timeout)


def wait_until(pred: Callable[[], bool], timeout: float = 2.0) -> bool:
    """Poll ``pred`` until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return bool(pred())
