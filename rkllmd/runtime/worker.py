"""Crash isolation: a runtime that runs the real one in a child process.

A segfault or abort() inside a native runtime (librkllmrt.so, llama.cpp) would otherwise kill
the whole daemon and every request in it. Here it kills only the worker: the request in flight
gets a ``runtime_crashed`` error, the loop reloads the model (within a restart budget), and the
MQTT side never notices. Unloading a model ends its worker, which returns all native memory.

Threads and processes:
- parent, *inference thread*: every method except ``abort``/``kill``; it alone uses the command pipe.
- parent, any thread: ``abort`` and ``kill`` use the control pipe (its own lock).
- child, main thread: runs the real runtime, one command at a time (``_serve``).
- child, control thread: turns control messages into ``abort()`` calls on the real runtime.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

import structlog

from rkllmd import errors
from rkllmd.config_base import ModelCommon
from rkllmd.errors import ModelLoadError, RkllmdError, RuntimeCrashed, RuntimeFailure
from rkllmd.runtime.base import GenerateInput, GenerateResult, Runtime, RuntimeKind, TokenSink

if TYPE_CHECKING:
    from rkllmd.settings import Settings

log = structlog.get_logger("rkllmd.worker")

_SPAWN = multiprocessing.get_context("spawn")  # forking a process with threads is unsafe


class WorkerRuntime(Runtime):
    """Proxy to a real runtime of ``runtime_kind`` living in a child process, which builds it
    with ``runtime_kind.open_runtime`` from the pickled model settings and configuration."""

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
        self._proc: BaseProcess | None = None
        self._cmd: Connection | None = None
        self._ctl: Connection | None = None
        self._ctl_lock = threading.Lock()
        self._facts: dict[str, Any] = {}
        self._killed = False

    # --- inference thread ----------------------------------------------------------------------

    def open(self) -> None:
        cmd_parent, cmd_child = _SPAWN.Pipe()
        ctl_parent, ctl_child = _SPAWN.Pipe()
        log_cfg = (self.settings.log.level, self.settings.log.format)
        opener = self.runtime_kind.open_runtime  # pickled by reference: a module-level function
        proc = _SPAWN.Process(
            target=_child_main,
            args=(cmd_child, ctl_child, opener, self.name, self.cfg, self.settings, log_cfg),
            name=f"rkllmd-worker-{self.name}",
            daemon=True,
        )
        proc.start()
        cmd_child.close()
        ctl_child.close()
        self._proc, self._cmd, self._ctl = proc, cmd_parent, ctl_parent
        if not cmd_parent.poll(self.load_timeout_s):
            self.close()
            raise ModelLoadError(f"model {self.name!r} did not load within {self.load_timeout_s:g} s")
        reply = self._recv()
        if reply[0] == "error":
            self.close()
            raise _rebuild(reply)
        self._facts = reply[1]
        log.info("worker started", model=self.name, pid=proc.pid)

    def generate(self, inp: GenerateInput, sink: TokenSink) -> GenerateResult:
        self._send(("generate", inp))
        while True:
            msg = self._recv()
            if msg[0] == "token":
                sink(msg[1], msg[2])
            elif msg[0] == "done":
                result: GenerateResult = msg[1]
                return result
            else:
                raise _rebuild(msg)

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
        proc, cmd, ctl = self._proc, self._cmd, self._ctl
        self._proc = self._cmd = self._ctl = None
        if proc is None:
            return
        if proc.is_alive() and cmd is not None:
            try:
                cmd.send(("close",))
                proc.join(timeout=30)
            except (OSError, EOFError, BrokenPipeError):
                pass
        if proc.is_alive():
            log.warning("worker did not exit; killing it", model=self.name, pid=proc.pid)
            proc.kill()
            proc.join(timeout=10)
        for conn in (cmd, ctl):
            if conn is not None:
                conn.close()
        log.info("worker ended", model=self.name, pid=proc.pid, exitcode=proc.exitcode)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    # --- any thread ----------------------------------------------------------------------------

    def abort(self) -> None:
        with self._ctl_lock:
            ctl = self._ctl
            if ctl is None:
                return
            # a dead worker cannot take the message; generate() reports the crash
            with contextlib.suppress(OSError):
                ctl.send("abort")

    def kill(self) -> None:
        """End a wedged worker that ignores abort; generate() then raises RuntimeCrashed."""
        proc = self._proc
        if proc is not None and proc.is_alive():
            self._killed = True
            log.warning("killing wedged worker", model=self.name, pid=proc.pid)
            proc.kill()

    # --- plumbing --------------------------------------------------------------------------------

    def _call(self, op: str, *args: Any) -> Any:
        self._send((op, *args))
        msg = self._recv()
        if msg[0] != "ok":
            raise _rebuild(msg)
        return msg[1]

    def _send(self, msg: tuple[Any, ...]) -> None:
        if self._cmd is None:
            raise RuntimeFailure(f"model {self.name!r} is not open")
        try:
            self._cmd.send(msg)
        except (OSError, BrokenPipeError):
            raise self._crashed() from None

    def _recv(self) -> tuple[Any, ...]:
        if self._cmd is None:
            raise RuntimeFailure(f"model {self.name!r} is not open")
        try:
            msg: tuple[Any, ...] = self._cmd.recv()
        except (EOFError, OSError):
            raise self._crashed() from None
        return msg

    def _crashed(self) -> RuntimeCrashed:
        proc = self._proc
        code = None
        if proc is not None:
            proc.join(timeout=5)
            code = proc.exitcode
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
        message = f"runtime crashed ({how}); the model is reloaded"
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


def _error_msg(exc: BaseException) -> tuple[Any, ...]:
    if isinstance(exc, RkllmdError):
        safe = {k: v for k, v in exc.data.items() if isinstance(v, (str, int, float, bool, type(None)))}
        return ("error", type(exc).__name__, exc.message, safe)
    return ("error", "RuntimeFailure", f"{type(exc).__name__}: {exc}", {})


# --- child process ---------------------------------------------------------------------------------


def _child_main(
    cmd: Connection,
    ctl: Connection,
    open_runtime: Callable[[str, Any, Settings], Runtime],
    name: str,
    cfg: ModelCommon,
    settings: Settings,
    log_cfg: tuple[str, Any],
) -> None:
    """Entry point of the worker process: open the runtime, then serve commands until close."""
    from rkllmd import logs

    # The parent handles SIGINT/SIGTERM and tells us to close; a terminal's Ctrl-C reaches the
    # whole process group, so ignore it here instead of dying mid-request.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logs.configure(*log_cfg)
    structlog.contextvars.bind_contextvars(worker=name)
    rt = open_runtime(name, cfg, settings)
    try:
        rt.open()
    except BaseException as exc:
        cmd.send(_error_msg(exc))
        rt.close()
        return
    cmd.send(("opened", {"context_length": rt.context_length, "describe": rt.describe()}))

    def control() -> None:
        while True:
            try:
                ctl.recv()
            except (EOFError, OSError):
                return
            rt.abort()

    threading.Thread(target=control, name="worker-control", daemon=True).start()
    try:
        _serve(cmd, rt)
    finally:
        rt.close()


def _serve(cmd: Connection, rt: Runtime) -> None:
    while True:
        try:
            msg = cmd.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        op = msg[0]
        if op == "close":
            return
        try:
            if op == "generate":
                result = rt.generate(msg[1], lambda text, tid: cmd.send(("token", text, tid)))
                cmd.send(("done", result))
            elif op == "clear_cache":
                rt.clear_cache(msg[1])
                cmd.send(("ok", None))
            elif op == "count_tokens":
                cmd.send(("ok", rt.count_tokens(msg[1])))
            elif op == "prompt_tokens":
                cmd.send(("ok", rt.prompt_tokens(msg[1])))
            else:
                cmd.send(("error", "RuntimeFailure", f"unknown worker command {op!r}", {}))
        except Exception as exc:
            cmd.send(_error_msg(exc))
