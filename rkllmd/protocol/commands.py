"""What a command is, as the protocol sees it: its request topic, payload model and plain-text field.

Pure data only: no network, no threads, no table. Each command declares itself in its own module
of ``rkllmd/commands/`` (which adds how rkllmd serves it, ``rkllmd.commands.CommandSpec``, a
subclass); topic parsing (topics.py) and payload decoding and validation (payload.py) are given
the command, or the table, and read these facts only.
"""

from __future__ import annotations

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
