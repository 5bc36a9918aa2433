"""The command table: every ``<base>/request/<name>`` topic, its payload model and how it is served.

Pure functions and data only: no network, no threads. One table, so that topic parsing (topics.py),
payload decoding and validation (payload.py) and serving (rkllmd/ingress.py) cannot disagree
about which commands exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from rkllmd.protocol.requests import CancelRequest, GenerateRequest, ModelRequest, NoArgsRequest, Req

Serve = Literal["generate", "cancel", "models", "queue"]


@dataclass(frozen=True)
class Command:
    """One request topic ``<base>/request/<name>``: its payload model, the field a plain-text
    payload fills, and how rkllmd serves it (rkllmd/ingress.py): ``queue`` goes through the
    inference queue as a control job, ``models`` and ``cancel`` are answered at once."""

    name: str
    request: type[Req]
    plain_field: str | None
    serve: Serve


# The one command table: topics, validation, plain-text payloads and serving all read it.
COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command("generate", GenerateRequest, "prompt", "generate"),
        Command("cancel", CancelRequest, "id", "cancel"),
        Command("models", NoArgsRequest, None, "models"),
        Command("load", ModelRequest, "model", "queue"),
        Command("unload", ModelRequest, "model", "queue"),
        Command("clear_cache", ModelRequest, "model", "queue"),
    )
}
