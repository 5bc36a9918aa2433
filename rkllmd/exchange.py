"""One request, one record: the Exchange carries a request from admission to its final reply.

Threads: an Exchange is made and filled on the *ingress* thread (rkllmd/ingress.py); once queued,
its ``run`` is written by the *inference* thread (and by ``cancel``/the watchdog, which only set
the abort fields); the *dispatcher* reads it to publish and route. Tokens and the final reply
travel as :class:`Token` and :class:`Final`, the same objects the plugins' routers receive.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

from rkllmd import protocol
from rkllmd.embedding import VectorInput
from rkllmd.errors import RkllmdError, UnknownModel
from rkllmd.generation import GenerateInput
from rkllmd.protocol import Address
from rkllmd.settings import Settings

# thinking_limit: the run's thought reached its cap (rkllmd/thinking.py, docs/THINKING.md)
AbortReason = Literal["cancelled", "timeout", "first_token_timeout", "stalled", "shutdown", "thinking_limit"]


@dataclass
class Run:
    """What the inference loop records while the request waits and runs (see the module docstring)."""

    enqueued_at: float | None = None  # None: never queued (refused or answered by ingress)
    started_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    abort_reason: AbortReason | None = None
    aborted_at: float | None = None
    pieces: list[str] = field(default_factory=list)
    thoughts: list[str] = field(default_factory=list)  # a thinking model's thought, apart from the text
    seq: int = 0
    overtaken: int = 0  # generations that ran before this background job while it waited (jobqueue.py)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # in the reply's shape
    bad_calls: list[str] = field(default_factory=list)  # why each malformed call was withheld
    journal_key: str | None = None  # open in the request journal (rkllmd/journal.py) until answered
    direct_stream: bool = False  # its chunks went out from the inference thread (rkllmd/dispatch.py)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def thinking(self) -> str:
        return "".join(self.thoughts)


@dataclass
class Exchange:
    """One request: as it arrived, as plugins rewrite it, as it runs, until its final reply.

    The first fields are what plugins see (``rkllmd.plugins.Exchange``; a ``Token``'s or a
    ``Final``'s ``request`` is one): ``payload`` is the decoded JSON object (or ``{"prompt":
    text}`` for plain text) before validation, which a preprocessor may rewrite; ``meta`` is
    scratch space carried from preprocessors to routers; ``id`` and ``model`` are filled in once
    the request is accepted. ``address`` is where the final reply goes (None for rkllmd's own
    jobs, such as the startup load, which nobody is answered for). The validated payload (a
    ``protocol.Req``, such as ``GenerateRequest``) is not kept: its command's ``admit`` fills
    what the job reads (``model``, ``inp``) from it.
    """

    command: str
    topic: str
    payload: dict[str, Any] = field(default_factory=dict)
    topic_model: str | None = None
    original: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    model: str | None = None
    received_at: float = field(default_factory=time.time)
    address: Address | None = None
    inp: GenerateInput | None = None  # generate: what the runtime is asked to do
    vectors: VectorInput | None = None  # embed, rerank: what the runtime is asked to do
    stream: bool = True  # generate: publish stream chunks
    sentences: bool = False  # generate: publish whole sentences to speak (rkllmd/sentences.py)
    # generate: 2 or more when the broker sends the request again after a previous run may have
    # streamed it (a kill, a crash): its chunks say so, so readers drop the first attempt's
    attempt: int = 1
    run: Run = field(default_factory=Run)

    @property
    def local(self) -> bool:
        """Answered to routers only: nothing about it goes over MQTT (a plugins.LocalMessage)."""
        return self.address is not None and self.address.local


@dataclass(frozen=True)
class Token:
    """A streamed text delta of a generate request, and the thought that came with it (a
    thinking model's, never part of the text: rkllmd/thinking.py)."""

    request: Exchange
    seq: int
    delta: str
    thinking: str = ""


@dataclass(frozen=True)
class Final:
    """The one final reply of a request, success or error: the one outcome type rkllmd has."""

    request: Exchange
    status: Literal["ok", "error"]
    data: dict[str, Any]
    code: str | None = None
    error: str | None = None

    @classmethod
    def failed(cls, request: Exchange, exc: RkllmdError, data: dict[str, Any] | None = None) -> Final:
        return cls(request, "error", data if data is not None else {}, exc.code, exc.message)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def text(self) -> str:
        return str(self.data.get("text") or "")

    def as_reply(self) -> dict[str, Any]:
        """The reply as the requester got it (without transaction echo)."""
        return protocol.reply_body(self.status, self.data, self.code, self.error, self.request.id)


@dataclass(frozen=True)
class Target:
    """The model a generate request runs on and its completion cap."""

    model: str
    max_tokens: int


def resolve(settings: Settings, model: str | None, topic_model: str | None, max_tokens: int | None) -> Target:
    """The one rule for model and max_tokens (docs/PROTOCOL.md), for the daemon, plugins and test kit.

    The request's model, else the topic's, else ``default_model``; the request's max_tokens, else
    the model's ``max_new_tokens``, else ``limits.max_tokens``. Raises UnknownModel; the cap
    (``limits.max_tokens_cap``) is checked at admission, not here.
    """
    name = model or topic_model or settings.default
    require_model(settings, name)
    cfg = settings.models[name]
    return Target(name, max_tokens or cfg.max_new_tokens or settings.limits.max_tokens)


def require_model(settings: Settings, name: str) -> None:
    """Raise UnknownModel unless ``name`` is a configured model."""
    if name not in settings.models:
        raise UnknownModel(f"unknown model {name!r}; configured: {', '.join(settings.models)}")
