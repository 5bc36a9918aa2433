"""Topic names, derived from the base topic, and the messages that arrive on them.

Pure functions and data only: no network, no threads. ``Incoming`` is what the bus copies out of
paho's network thread; nothing here holds a connection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from rkllmd.errors import UnknownCommand
from rkllmd.protocol.address import Receipt
from rkllmd.protocol.commands import Command

C = TypeVar("C", bound=Command)


@dataclass(frozen=True)
class Topics:
    """Every topic rkllmd publishes or subscribes to, derived from the base topic.

    With ``node`` set (fleet mode, docs/FLEET.md) the board's own topics live under
    ``<base>/node/<node>/``: its state, info and stats, and ``request()``, the topic that reaches
    this board alone. ``group_request()`` is the topic every board of the group shares.
    """

    base: str
    node: str | None = None

    @property
    def own(self) -> str:
        """Where this board's state, info, stats and own request topics live."""
        return f"{self.base}/node/{self.node}" if self.node else self.base

    def request(self, command: str) -> str:
        """The request topic that reaches this board (in a fleet: this board alone)."""
        return f"{self.own}/request/{command}"

    def group_request(self, command: str) -> str:
        """The request topic of the whole group (in a fleet: the broker picks a board)."""
        return f"{self.base}/request/{command}"

    def node_topic(self, node: str, kind: str) -> str:
        """Another board's ``state``, ``info`` or ``stats`` (``+`` for every board's)."""
        return f"{self.base}/node/{node}/{kind}"

    @property
    def fleet_stats(self) -> str:
        """The group's view: queue and boards across the fleet (published by its leader)."""
        return f"{self.base}/fleet/stats"

    @property
    def fleet_state(self) -> str:
        """The group's availability, retained: ``online`` with the boards online (the leader's), or
        ``offline`` (the leader's Will: the last board died)."""
        return f"{self.base}/fleet/state"

    @property
    def fleet_cancel(self) -> str:
        """A cancel passed on to every board by the board that received it."""
        return f"{self.base}/fleet/cancel"

    @property
    def fleet_cancel_report(self) -> str:
        """Each board's answer to a passed-on cancel: whether it had the request."""
        return f"{self.base}/fleet/cancel/report"

    def response(self, command: str) -> str:
        return f"{self.base}/response/{command}"

    @property
    def request_wildcard(self) -> str:
        return f"{self.base}/request/#"

    @property
    def own_request_wildcard(self) -> str:
        return f"{self.own}/request/#"

    def stream(self, request_id: str) -> str:
        return f"{self.base}/stream/{request_id}"

    def stream_text(self, request_id: str) -> str:
        return f"{self.base}/stream/{request_id}/text"

    def stream_thinking(self, request_id: str) -> str:
        """The bare thought of request ``request_id`` (a thinking model's), as ``/text`` has its text."""
        return f"{self.base}/stream/{request_id}/thinking"

    def stream_sentences(self, request_id: str) -> str:
        """Whole sentences of request ``request_id``, as plain text to speak (``"sentences": true``)."""
        return f"{self.base}/stream/{request_id}/sentences"

    @property
    def state(self) -> str:
        return f"{self.own}/state"

    @property
    def info(self) -> str:
        return f"{self.own}/info"

    @property
    def stats(self) -> str:
        return f"{self.own}/stats"

    def in_namespace(self, topic: str) -> bool:
        """Whether ``topic`` is one of rkllmd's own (state, info, stats, streams, requests, plugins,
        other boards'...) other than its reply space, ``<base>/response/...``: a request may not
        have its reply written there (docs/PROTOCOL.md, "Where the final reply goes")."""
        inside = topic == self.base or topic.startswith(f"{self.base}/")
        return inside and not topic.startswith(f"{self.base}/response/")

    def parse_request_topic(self, topic: str, commands: Mapping[str, C]) -> tuple[C, str | None]:
        """Split ``<base>/request/<command>[/<model>]`` (or this board's own request topic) into
        the command of ``commands`` (rkllmd.commands.COMMANDS) and the model; raise UnknownCommand."""
        rest = topic
        for prefix in (f"{self.own}/request/", f"{self.base}/request/"):
            if topic.startswith(prefix):
                rest = topic[len(prefix) :]
                break
        parts = rest.split("/")
        command = commands.get(parts[0])
        if command is None:
            raise UnknownCommand(f"unknown command {parts[0]!r}; known: {', '.join(commands)}")
        if len(parts) == 1:
            return command, None
        if command.model_topic and len(parts) == 2 and parts[1]:  # a command that may name its model here
            return command, parts[1]
        raise UnknownCommand(f"unknown request topic {topic!r}")


def reply_to_refusal(topic: str, what: str, topics: Topics, reserved: Callable[[str], bool]) -> str | None:
    """Why a reply may not go to ``topic`` (``what``: "reply_to" or "the Response Topic"), or None:
    rkllmd's own namespace (``Topics.in_namespace``) and what plugins reserve (``reserved``, e.g.
    Home Assistant's discovery prefix) would let a user publish there as rkllmd."""
    if topics.in_namespace(topic) or reserved(topic):
        return (
            f"{what} {topic!r} is a topic rkllmd publishes on its own; a reply must go to a topic "
            f"of yours (e.g. reply/<user>/...) or, without one, to {topics.base}/response/<command>"
        )
    return None


@dataclass(frozen=True)
class Incoming:
    """One MQTT message, copied out of paho on its network thread."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None
    received_at: float = 0.0
    receipt: Receipt | None = None  # None: QoS 0, or not from the broker (a plugin's message)
    dup: bool = False  # the broker sends it again (after a reconnect): it may have been answered


@dataclass(frozen=True)
class LocalMessage(Incoming):
    """A request a plugin injects for its own transport (e.g. HTTP): handled like any message on
    its topic, but nothing about it is published over MQTT (no stream chunks, no final reply);
    routers still see its tokens and its final reply. So answers meant for another transport
    neither reach the broker's subscribers nor pile up in the MQTT client while the broker is away.

    ``key`` is the injecting plugin's own name for the request: ingress copies it into the reply's
    Address before it reads a byte of the payload, so every answer, a refusal of bytes it cannot
    parse included, reaches the plugin's router under that key (plugins/builtin/_relay.py).
    """

    key: str | None = None
