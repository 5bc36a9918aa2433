"""What a command is, as the protocol sees it: its request topic, payload model and plain-text field.

Pure data only: no network, no threads, no table of commands (the one table here is of model
kinds). Each command declares itself in its own module of ``rkllmd/commands/`` (which adds how
rkllmd serves it, ``rkllmd.commands.CommandSpec``, a subclass); topic parsing (topics.py) and
payload decoding and validation (payload.py) are given the command, or the table, and read these
facts only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from rkllmd.protocol.requests import Req


@dataclass(frozen=True)
class Command:
    """One request topic ``<base>/request/<name>`` and what the protocol knows of it.

    ``plain_field``: the field a plain-text payload fills (None: plain text is an empty request).
    ``generates``: the command streams tokens: its plain text is the prompt as written (an empty one is
    refused ``empty_prompt``), and the rest of rkllmd gives it a stream, the watchdog and cancel.
    ``cancellable``: its queued or running job is cancelled by its id (``cancel``) and its id is
    unique in the queue; a generating command is, whatever this says (embed, rerank set it).
    ``queued``: served through the inference queue; else answered at once by the ingress thread.
    ``model_topic``: its topic may name the model, ``<base>/request/<name>/<model>`` (generate,
    embed, rerank); in a fleet that topic reaches only the boards that serve the model.
    ``changes_model``: its reply is followed by the info topic again (the loaded model changed).
    ``background``: its queued job gives way (embed, rerank): a generation queued behind it runs
    first, at most ``limits.background_overtakes`` times, and such jobs have queue places of their
    own, so they never fill the queue against a generation (rkllmd/jobqueue.py).
    """

    name: str
    request: type[Req]
    plain_field: str | None = None
    generates: bool = False
    queued: bool = True
    cancellable: bool = False
    changes_model: bool = False
    model_topic: bool = False
    background: bool = False


# The command that serves each kind of model (its ``kind``): a request sent to a model of another
# kind is told which to use ("use embed"), in the one wording below; an interface that is not
# MQTT names its own endpoint there instead (``use_named``), as its clients know no commands.
SERVES = {"chat": "generate", "embedding": "embed", "rerank": "rerank"}
_USE = re.compile(r"\buse (generate|embed|rerank)\b")


def use_for(kind: str) -> str:
    """What a ``wrong_model_kind`` refusal tells the client to use instead: ``use embed``."""
    return f"use {SERVES.get(kind, kind)}"


def use_named(message: str, endpoints: Mapping[str, str]) -> str:
    """A ``wrong_model_kind`` message with its ``use <command>`` naming the interface's endpoint
    for that command (``endpoints``: command -> endpoint). The reply's text is all an interface
    has of it (in a fleet it comes over MQTT from another board), so the swap is made on it."""
    return _USE.sub(lambda m: f"use {endpoints.get(m.group(1), m.group(1))}", message, count=1)
