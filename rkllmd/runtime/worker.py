"""Crash isolation: a runtime that runs the real one in a child process.

A segfault or abort() inside a native runtime (librkllmrt.so, llama.cpp) would otherwise kill
the whole daemon and every request in it. Here it kills only the worker: the request in flight
gets a ``runtime_crashed`` error, the loop reloads the model (within a restart budget), and the
MQTT side never notices. Unloading a model ends its worker, which returns all native memory.

The worker is ``python -m rkllmd.runtime._child`` started with three inherited pipes (no
multiprocessing, so no resource-tracker process); that module says what the worker imports,
rkllmd.runtime.pipe what crosses the pipes. Every method of the interface marked served
(rkllmd.runtime.base.served) is forwarded by the same code, as one call (:meth:`WorkerRuntime._call`):
:func:`forwards_served` writes the forwarders, so a method added to the interface needs no
change here. It receives the model's table and its kind's own table of the configuration
(:func:`runtime_settings`), not the whole configuration, and as plain data
(:func:`table`): unpickling the pydantic models would import pydantic into the worker.

Threads and processes:
- parent, *inference thread*: every method except ``abort``/``kill``; it alone uses the command
  pipe and reads the event pipe. Tokens arrive in batches: every read of the pipe hands all the
  tokens it brought to the sink as one delta.
- parent, any thread: ``abort`` and ``kill`` use the control pipe (its own lock) and the process.
- child: see rkllmd.runtime._child.
"""

from __future__ import annotations

import abc
import contextlib
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from pydantic import BaseModel

from rkllmd import errors, toolcalls
from rkllmd.config_base import ModelCommon
from rkllmd.errors import ModelLoadError, RkllmdError, RuntimeCrashed, RuntimeFailure
from rkllmd.generation import GenerateInput
from rkllmd.runtime.base import GenerateResult, Runtime, RuntimeKind, Table, TokenSink, served_methods
from rkllmd.runtime.pipe import (
    CALL,
    CLOSE,
    K_CMD,
    K_LOG,
    K_REPLY,
    K_TOKENS,
    Arg,
    FrameReader,
    tokens_text,
    write_frame,
)

if TYPE_CHECKING:
    from rkllmd.runtime.models import RuntimeConfig

log = structlog.get_logger("rkllmd.worker")


def table(model: BaseModel) -> Table:
    """``model`` as a :class:`Table` of the same attribute names, its nested models tables too."""
    return Table({name: _plain(getattr(model, name)) for name in type(model).model_fields})


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return table(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def runtime_settings(settings: RuntimeConfig, kind: RuntimeKind) -> Table:
    """What a runtime's ``open_runtime`` reads of the whole configuration: its kind's own table
    (``RuntimeKind.table``, ``[rkllm]`` for RKLLM) under its name, as a :class:`Table`, or no
    table at all: unpickling the whole Settings would import the configuration loader."""
    if kind.table is None:
        return Table({})
    own: BaseModel = getattr(settings, kind.name)
    return Table({kind.name: table(own)})


_R = TypeVar("_R", bound=type[Runtime])


def forwards_served(cls: _R) -> _R:
    """Give the proxy class ``cls`` a forwarder for each served method that neither it nor a
    proxy class it derives from defines: the method's name and arguments go to the worker as one
    call (:meth:`WorkerRuntime._call`), and its reply comes back. The forwarders take their
    types from the interface, where each method is declared."""
    for method in sorted(served_methods(cls)):
        owner = next(k for k in cls.__mro__ if method in vars(k))
        if owner is not cls and not vars(owner).get("_forwards_served", False):
            setattr(cls, method, _forwarder(method, getattr(cls, method)))
    cls._forwards_served = True  # type: ignore[attr-defined]
    abc.update_abstractmethods(cls)  # an abstract method of the interface has its forwarder now
    return cls


def _forwarder(method: str, declared: Callable[..., Any]) -> Callable[..., Any]:
    def forward(self: WorkerRuntime, *args: Any, **kwargs: Any) -> Any:
        return self._call(method, *args, **kwargs)

    forward.__name__ = forward.__qualname__ = method
    forward.__doc__ = declared.__doc__
    return forward


@forwards_served
class WorkerRuntime(Runtime):
    """Proxy to a real runtime of ``runtime_kind`` living in a child process, which builds it
    with ``runtime_kind.open_runtime`` from the pickled model settings."""

    sink_on_caller = True  # tokens come off the pipe on the inference thread, which called generate

    def __init__(
        self,
        runtime_kind: RuntimeKind,
        name: str,
        cfg: ModelCommon,
        settings: RuntimeConfig,
        load_timeout_s: float = 600.0,
    ) -> None:
        self.runtime_kind = runtime_kind
        self.name = name
        self.cfg = cfg
        self.settings = settings
        self.kind = runtime_kind.name
        self.load_timeout_s = load_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._cmd: int | None = None  # write end of the command pipe
        self._events: FrameReader | None = None  # read end of the event pipe
        self._ctl: int | None = None  # write end of the control pipe
        self._ctl_lock = threading.Lock()
        self._facts: dict[str, Any] = {}
        self._killed = False
        self._pending: list[tuple[bytes, bytes]] = []  # frames read but not yet handled
        self._logs: dict[str, Any] = {}  # loggers of the worker's records, by name

    # --- inference thread ----------------------------------------------------------------------

    def open(self) -> None:
        cmd_r, cmd_w = os.pipe()
        ev_r, ev_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        for fd in (cmd_w, ev_r, ctl_w):
            os.set_inheritable(fd, False)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "rkllmd.runtime._child", str(cmd_r), str(ev_w), str(ctl_r)],
                pass_fds=(cmd_r, ev_w, ctl_r),
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
        except OSError as exc:
            for fd in (cmd_r, cmd_w, ev_r, ev_w, ctl_r, ctl_w):
                os.close(fd)
            raise ModelLoadError(f"cannot start the worker of model {self.name!r}: {exc}") from exc
        for fd in (cmd_r, ev_w, ctl_r):
            os.close(fd)
        self._proc, self._cmd, self._events, self._ctl = proc, cmd_w, FrameReader(ev_r), ctl_w
        self._killed = False
        self._pending = []
        self._send(self.opening())
        ready, _, _ = select.select([ev_r], [], [], self.load_timeout_s)
        if not ready:
            self.close()
            raise ModelLoadError(f"model {self.name!r} did not load within {self.load_timeout_s:g} s")
        reply = self._reply(None)
        if reply[0] != "ok":
            self.close()
            raise _rebuild(reply)
        self._facts = reply[1]
        log.info("worker started", model=self.name, pid=proc.pid)

    def opening(self) -> tuple[Any, ...]:
        """The worker's first command: how to build the runtime, from plain data only.

        ``open_runtime`` is pickled by reference (a module-level function of the runtime package's
        ``__init__``, which imports no pydantic); the settings go as Tables (:func:`table`).
        """
        return (
            self.runtime_kind.open_runtime,
            self.name,
            table(self.cfg),
            runtime_settings(self.settings, self.runtime_kind),
            self.settings.log.level,
        )

    def generate(self, inp: GenerateInput, sink: TokenSink) -> GenerateResult:
        # Forwarded as every served method is; written out only because the interface declares
        # it abstract, which a type checker cannot see the generated forwarder fill.
        result: GenerateResult = self._call("generate", inp, sink)
        return result

    @property
    def context_length(self) -> int | None:
        n: int | None = self._facts.get("context_length")
        return n

    @property
    def tool_format(self) -> toolcalls.ToolFormat:
        # The worker's runtime resolved it when it opened, and says so in its describe().
        return toolcalls.get(self._facts.get("describe", {}).get("tool_format", "hermes"))

    def describe(self) -> dict[str, Any]:
        proc = self._proc
        return {**self._facts.get("describe", {}), "isolation": "process", "pid": proc.pid if proc else None}

    def close(self) -> None:
        proc, cmd, events = self._proc, self._cmd, self._events
        with self._ctl_lock:
            ctl, self._ctl = self._ctl, None
        self._proc, self._cmd, self._events = None, None, None
        if proc is None:
            return
        if proc.poll() is None and cmd is not None:
            try:
                write_frame(cmd, K_CMD, pickle.dumps((CLOSE,)))
                proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if proc.poll() is None:
            log.warning("worker did not exit; killing it", model=self.name, pid=proc.pid)
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        for fd in (cmd, ctl, events.fd if events is not None else None):
            if fd is not None:
                os.close(fd)
        log.info("worker ended", model=self.name, pid=proc.pid, exitcode=proc.returncode)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # --- any thread ----------------------------------------------------------------------------

    def abort(self) -> None:
        with self._ctl_lock:
            ctl = self._ctl
            if ctl is None:
                return
            with contextlib.suppress(OSError):  # a dead worker cannot take it; generate() reports the crash
                os.write(ctl, b"a")

    def kill(self) -> None:
        """End a wedged worker that ignores abort; generate() then raises RuntimeCrashed."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            self._killed = True
            log.warning("killing wedged worker", model=self.name, pid=proc.pid)
            proc.kill()

    # --- plumbing --------------------------------------------------------------------------------

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """The served ``method`` of the runtime in the worker, called with these arguments: its
        return value, or its error raised here. A callable argument is a token sink (one at
        most): the worker passes its own in its place, and the tokens it gets meanwhile are
        handed to this one, all the tokens one read of the pipe brings as one delta."""
        sinks: list[TokenSink] = []

        def arg(value: Any) -> Any:
            if callable(value):
                sinks.append(value)
                return Arg.SINK
            return value

        call = (CALL, method, tuple(arg(a) for a in args), {k: arg(v) for k, v in kwargs.items()})
        if len(sinks) > 1:
            raise RuntimeFailure(
                f"a call to the worker takes one token sink at most ({method}: {len(sinks)})"
            )
        self._send(call)
        msg = self._reply(sinks[0] if sinks else None)
        if msg[0] != "ok":
            raise _rebuild(msg)
        return msg[1]

    def _send(self, msg: tuple[Any, ...]) -> None:
        if self._cmd is None:
            raise RuntimeFailure(f"model {self.name!r} is not open")
        try:
            write_frame(self._cmd, K_CMD, pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            raise self._crashed() from None

    def _frames(self) -> list[tuple[bytes, bytes]]:
        """The frames read but not handled, else the next batch from the pipe (blocking)."""
        if self._pending:
            frames, self._pending = self._pending, []
            return frames
        if self._events is None:
            raise RuntimeFailure(f"model {self.name!r} is not open")
        try:
            frames = self._events.read()
        except OSError:
            frames = []
        if not frames:
            raise self._crashed()
        return frames

    def _reply(self, sink: TokenSink | None) -> tuple[Any, ...]:
        """The reply to the last command; the tokens before it go to ``sink`` (only a call that
        passed one gets any), the log records before it are logged."""
        while True:
            frames = self._frames()
            texts: list[str] = []
            reply: tuple[Any, ...] | None = None
            for i, (kind, payload) in enumerate(frames):
                if kind == K_TOKENS:
                    texts.append(tokens_text(payload))
                elif kind == K_REPLY:
                    reply = pickle.loads(payload)
                    self._pending = frames[i + 1 :]
                    break
                elif kind == K_LOG:
                    self._log(payload)
            if texts and sink is not None:  # all the tokens this read brought, as one delta
                sink("".join(texts), None)
            if reply is not None:
                return reply

    def _log(self, payload: bytes) -> None:
        """A record the worker logged, through this process's logging (worker=<model> included)."""
        level, name, event, kw = pickle.loads(payload)
        logger = self._logs.get(name)
        if logger is None:
            logger = self._logs[name] = structlog.get_logger(name)
        getattr(logger, level, logger.info)(event, **kw)

    def _crashed(self) -> RuntimeCrashed:
        proc = self._proc
        code = None
        if proc is not None:
            try:
                code = proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
        how = f"exit code {code}"
        if code is not None and code < 0:
            try:
                how = signal.Signals(-code).name
            except ValueError:
                how = f"signal {-code}"
        if self._killed:
            how += ", killed by rkllmd's watchdog"
        hint = self.runtime_kind.crash_hint(code)
        log.error("runtime worker died", model=self.name, how=how, **({"hint": hint} if hint else {}))
        message = f"runtime crashed ({how})"  # the loop adds whether the model is reloaded
        if hint:
            message = f"runtime crashed ({how}): {hint}"
            return RuntimeCrashed(message, model=self.name, how=how, hint=hint)
        return RuntimeCrashed(message, model=self.name, how=how)


def _rebuild(msg: tuple[Any, ...]) -> RkllmdError:
    """Turn ("error", class name, message, data) from the child back into our exception."""
    _, cls_name, message, data = msg
    cls = getattr(errors, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, RkllmdError)):
        cls = RuntimeFailure
    exc = cls.__new__(cls)
    RkllmdError.__init__(exc, message, **data)
    for key in ("function", "rc"):
        if key in data:
            setattr(exc, key, data[key])
    return exc
