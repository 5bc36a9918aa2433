"""What a command module declares (``CommandSpec``) and what its code may ask of the daemon.

A ``CommandSpec`` is the protocol's ``Command`` (rkllmd.protocol: topic, request model, plain-text
field, flags) plus how rkllmd serves it: ``admit`` on the ingress thread once the request
validates; then either ``answer`` at once on the ingress thread, or ``run`` as a job on the
inference thread, with the loaded runtime (``Engine``, which rkllmd.loop.InferenceLoop is).
Nothing here runs a thread or imports a runtime implementation (only its interface,
rkllmd.runtime.base): ``Engine`` and ``Desk`` are what the loop and the ingress offer, so that
command modules import neither.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from rkllmd.exchange import Exchange, Final, Token
from rkllmd.jobs import DirectStream, Timeouts
from rkllmd.protocol import Command, Req, Topics
from rkllmd.runtime.base import GenerateResult, Runtime
from rkllmd.settings import Settings


class Models(Protocol):
    """The configured models the loop loads from (rkllmd.runtime.models.ModelRegistry)."""

    def require_model(self, name: str) -> None: ...


class Engine(Protocol):
    """What a job may ask of the inference loop (rkllmd.loop.InferenceLoop), on the inference thread."""

    @property
    def default_model(self) -> str: ...

    @property
    def registry(self) -> Models: ...

    @property
    def limits(self) -> Timeouts: ...

    @property
    def emit(self) -> Callable[[Token], None]: ...

    @property
    def direct(self) -> DirectStream | None: ...

    @property
    def counters(self) -> dict[str, Any]:
        """The loop's counters in the stats topic (requests, errors, completion_tokens, ...)."""
        ...

    @property
    def loaded_model(self) -> str | None: ...

    @property
    def runtime(self) -> Runtime | None:
        """The loaded model's runtime, or None."""
        ...

    def load(self, name: str) -> Runtime:
        """The runtime of model ``name``, loaded now unless it is (another one unloaded first)."""
        ...

    def unload(self) -> None: ...

    def begin(self, job: Exchange) -> None:
        """The job's run starts now: the watchdog's limits apply from here."""
        ...

    def survive(self, job: Exchange, run: Callable[[], GenerateResult]) -> GenerateResult:
        """``run()``; a runtime crash on the way counts against the model's restart budget and
        ends the job as the crash's cause says (the loop's crash rules)."""
        ...


class Canceller(Protocol):
    """The inference loop as a cancel sees it (rkllmd.loop.InferenceLoop), any thread."""

    @property
    def loaded_model(self) -> str | None: ...

    def cancel(self, request_id: str, *, owner: str | None = None) -> Literal["queued", "running"]: ...


class Passer(Protocol):
    """A fleet, which passes a cancel it cannot serve on to the other boards (rkllmd.fleet.Fleet)."""

    def pass_on_cancel(self, ex: Exchange) -> None: ...


class Desk(Protocol):
    """What a command answered at once may ask of the ingress (rkllmd.ingress.Ingress), ingress thread."""

    @property
    def settings(self) -> Settings: ...

    @property
    def topics(self) -> Topics: ...

    @property
    def loop(self) -> Canceller: ...

    @property
    def fleet(self) -> Passer | None: ...


def admit_nothing(req: Req, ex: Exchange, settings: Settings) -> None:
    """A command whose request needs nothing past validation."""


@dataclass(frozen=True)
class CommandSpec(Command):
    """A command and how rkllmd serves it; each module of rkllmd/commands/ declares one, ``COMMAND``.

    ``admit`` (ingress thread): reads the validated request into the exchange (model, input, reply
    address) or raises the RkllmdError it is refused with. A queued command has ``run`` (inference
    thread): the job, which returns its final reply or raises; one answered at once has ``answer``
    (ingress thread): its final reply, or None when another part answers later (a fleet's cancel).
    """

    admit: Callable[[Req, Exchange, Settings], None] = admit_nothing
    run: Callable[[Exchange, Engine], Final] | None = None
    answer: Callable[[Exchange, Desk], Final | None] | None = None

    def __post_init__(self) -> None:
        if (self.run is None) == self.queued or (self.answer is None) != self.queued:
            raise TypeError(f"command {self.name!r}: a queued command has run, any other answer")
        if self.background and (self.generates or not self.queued):
            raise TypeError(f"command {self.name!r}: only a queued job that does not generate gives way")
