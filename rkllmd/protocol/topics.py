"""Topic names, derived from the base topic, and the messages that arrive on them.

Pure functions and data only: no network, no threads. ``Incoming`` is what the bus copies out of
paho's network thread; nothing here holds a connection.
"""

from __future__ import annotations

from dataclasses import dataclass

from rkllmd.errors import UnknownCommand
from rkllmd.protocol.commands import COMMANDS


@dataclass(frozen=True)
class Topics:
    """Every topic rkllmd publishes or subscribes to, derived from the base topic."""

    base: str

    def request(self, command: str) -> str:
        return f"{self.base}/request/{command}"

    def response(self, command: str) -> str:
        return f"{self.base}/response/{command}"

    @property
    def request_wildcard(self) -> str:
        return f"{self.base}/request/#"

    def stream(self, request_id: str) -> str:
        return f"{self.base}/stream/{request_id}"

    def stream_text(self, request_id: str) -> str:
        return f"{self.base}/stream/{request_id}/text"

    def stream_sentences(self, request_id: str) -> str:
        """Whole sentences of request ``request_id``, as plain text to speak (``"sentences": true``)."""
        return f"{self.base}/stream/{request_id}/sentences"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def info(self) -> str:
        return f"{self.base}/info"

    @property
    def stats(self) -> str:
        return f"{self.base}/stats"

    def parse_request_topic(self, topic: str) -> tuple[str, str | None]:
        """Split ``<base>/request/<command>[/<model>]`` into (command, model); raise UnknownCommand."""
        prefix = f"{self.base}/request/"
        rest = topic[len(prefix) :] if topic.startswith(prefix) else topic
        parts = rest.split("/")
        command = parts[0]
        if command not in COMMANDS:
            raise UnknownCommand(f"unknown command {command!r}; known: {', '.join(COMMANDS)}")
        if len(parts) == 1:
            return command, None
        if command == "generate" and len(parts) == 2 and parts[1]:
            return command, parts[1]
        raise UnknownCommand(f"unknown request topic {topic!r}")


@dataclass(frozen=True)
class Incoming:
    """One MQTT message, copied out of paho on its network thread."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None
    received_at: float = 0.0


@dataclass(frozen=True)
class LocalMessage(Incoming):
    """A request a plugin injects for its own transport (e.g. HTTP): handled like any message on
    its topic, but nothing about it is published over MQTT (no stream chunks, no final reply);
    routers still see its tokens and its final reply. So answers meant for another transport
    neither reach the broker's subscribers nor pile up in the MQTT client while the broker is away.
    """
