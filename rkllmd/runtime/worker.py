"""Crash isolation: a runtime that runs the real one in a child process.

A segfault or abort() inside a native runtime (librkllmrt.so, llama.cpp) would otherwise kill
the whole daemon and every request in it. Here it kills only the worker: the request in flight
gets a ``runtime_crashed`` error, the loop reloads the model (within a restart budget), and the
MQTT side never notices. Unloading a model ends its worker, which returns all native memory.

The worker is ``python -m rkllmd.runtime._child`` started with three inherited pipes (no
multiprocessing, so no resource-tracker process); that module describes the frames and what
the worker imports. It receives the model's table and the tables of the configuration its
runtime reads (:func:`runtime_settings`), not the whole configuration, and as plain data
(:func:`table`): unpickling the pydantic models would import pydantic into the worker.

Threads and processes:
- parent, *inference thread*: every method except ``abort``/``kill``; it alone uses the command
  pipe and reads the event pipe. Tokens arrive in batches: every read of the pipe hands all the
  tokens it brought to the sink as one delta.
- parent, any thread: ``abort`` and ``kill`` use the control pipe (its own lock) and the process.
- child: see rkllmd.runtime._child.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel

from rkllmd import errors
from rkllmd.config_base import ModelCommon
from rkllmd.errors import ModelLoadError, RkllmdError, RuntimeCrashed, RuntimeFailure
from rkllmd.generation import GenerateInput
from rkllmd.runtime._child import K_CMD, K_LOG, K_REPLY, K_TOKENS, FrameReader, tokens_text, write_frame
from rkllmd.runtime.base import GenerateResult, Runtime, RuntimeKind, Table, TokenSink

if TYPE_CHECKING:
    from rkllmd.settings import Settings

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


def runtime_settings(settings: Settings) -> Table:
    """The tables of the whole configuration a runtime's ``open_runtime`` reads (``[rkllm]``),
    as a :class:`Table`: unpickling the whole Settings would import the configuration loader."""
    return Table({"rkllm": table(settings.rkllm)})


class WorkerRuntime(Runtime):
    """Proxy to a real runtime of ``runtime_kind`` living in a child process, which builds it
    with ``runtime_kind.open_runtime`` from the pickled model settings."""

    sink_on_caller = True  # tokens come off the pipe on the inference thread, which called generate
    checks_context = True  # the worker checks the prompt's length before it generates

    def __init__(
        self,
        runtime_kind: RuntimeKind,
        name: str,
        cfg: ModelCommon,
        settings: Settings,
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
        reply = self._reply()
        if reply[0] == "error":
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
            runtime_settings(self.settings),
            self.settings.log.level,
        )

    def generate(self, inp: GenerateInput, sink: TokenSink) -> GenerateResult:
        self._send(("generate", inp))
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
            if texts:  # all the tokens this read brought, as one delta
                sink("".join(texts), None)
            if reply is not None:
                if reply[0] == "done":
                    result: GenerateResult = reply[1]
                    return result
                raise _rebuild(reply)

    def clear_cache(self, keep_system_prompt: bool = True) -> None:
        self._call("clear_cache", keep_system_prompt)

    def count_tokens(self, text: str) -> int | None:
        n: int | None = self._call("count_tokens", text)
        return n

    def prompt_tokens(self, inp: GenerateInput) -> int | None:
        n: int | None = self._call("prompt_tokens", inp)
        return n

    @property
    def context_length(self) -> int | None:
        n: int | None = self._facts.get("context_length")
        return n

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
                write_frame(cmd, K_CMD, pickle.dumps(("close",)))
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

    def _call(self, op: str, *args: Any) -> Any:
        self._send((op, *args))
        msg = self._reply()
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

    def _reply(self) -> tuple[Any, ...]:
        """The reply to the last command; log records before it are logged, tokens cannot come."""
        while True:
            frames = self._frames()
            for i, (kind, payload) in enumerate(frames):
                if kind == K_REPLY:
                    self._pending = frames[i + 1 :]
                    msg: tuple[Any, ...] = pickle.loads(payload)
                    return msg
                if kind == K_LOG:
                    self._log(payload)

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
