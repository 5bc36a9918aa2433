"""One rkllm_init'ed instance: the whole C API of the loaded release as Python methods.

Thread rules (the runtime's own, see docs/RKLLM.md): ``run`` blocks on the calling thread and the
result callback is delivered on that same thread; ``abort`` may be called from any thread while
``run`` blocks; every other method must not overlap ``run`` (``destroy`` waits for it).
Non-zero C return codes raise RuntimeCallError; a function the loaded release lacks raises
LibraryVersionError("… requires runtime ≥ X, loaded Y").
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Callable, Sequence
from ctypes import POINTER, Structure, byref, c_float, c_int, c_int32, c_void_p, pointer
from pathlib import Path
from typing import Any

from rkllmd import logface
from rkllmd.errors import LibraryVersionError, RuntimeCallError, RuntimeFailure
from rkllmd.runtime.rkllm._abi_common import RKLLMCrossAttnParam, RKLLMLoraAdapter
from rkllmd.runtime.rkllm._lib import RkllmLibrary

log = logface.get_logger(__name__)

# Called with (state, result or None) for every callback of a run; its return value is ignored.
ResultHandler = Callable[[int, Any], None]


def default_param(lib: RkllmLibrary) -> Structure:
    """rkllm_createDefaultParam() of the loaded release (restype is exactly that release's size)."""
    param: Structure = lib.fn("rkllm_createDefaultParam")()
    return param


class RkllmHandle:
    """Owns one LLMHandle and keeps the callback objects alive for the handle's lifetime."""

    def __init__(self, lib: RkllmLibrary, on_result: ResultHandler) -> None:
        self.lib = lib
        self.spec = lib.spec
        self._on_result = on_result
        self._h = c_void_p(None)
        self._run_lock = threading.Lock()  # held for a whole run; destroy waits on it
        self._h_lock = threading.Lock()  # guards the pointer between abort() and destroy()
        self._running = False
        self._keep: list[Any] = []  # buffers the runtime may still point at (cross-attn inputs)
        # The C trampoline and (1.3) the RKLLMCallback struct must outlive the handle.
        self._c_callback = self.spec.result_callback(self._trampoline)
        self._c_callback_struct: Structure | None = None
        self._param: Structure | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    def init(self, param: Structure) -> None:
        """rkllm_init with ``param`` (kept alive with its strings); RuntimeCallError on failure."""
        self._param = param
        init = self.lib.fn("rkllm_init")
        if self.spec.Callback is not None:
            cb = self.spec.Callback()
            cb.result_callback = self._c_callback
            self._c_callback_struct = cb
            rc = init(byref(self._h), byref(param), byref(cb))
        else:
            rc = init(byref(self._h), byref(param), self._c_callback)
        if rc != 0:
            self._h = c_void_p(None)
            raise RuntimeCallError("rkllm_init", rc)
        if not self._h.value:
            raise RuntimeCallError("rkllm_init", rc, "returned 0 but no handle")

    @property
    def alive(self) -> bool:
        return bool(self._h.value)

    def destroy(self) -> None:
        """rkllm_destroy once; the handle is NULLed first so a second call is a no-op."""
        with self._run_lock, self._h_lock:
            h = self._h.value
            self._h = c_void_p(None)
            if not h:
                return
            rc = self.lib.fn("rkllm_destroy")(c_void_p(h))
        if rc != 0:
            log.warning("rkllm_destroy_failed", rc=rc)

    def _handle(self) -> c_void_p:
        if not self._h.value:
            raise RuntimeFailure("the RKLLM model is not open")
        return self._h

    def _check(self, name: str, rc: int) -> None:
        if rc != 0:
            raise RuntimeCallError(name, rc)

    # ---- the callback -------------------------------------------------------------------------

    def _trampoline(self, result: Any, userdata: Any, state: int) -> int | None:
        """Runs on the thread that called rkllm_run. Never raises; returns 0 (None if void)."""
        try:
            self._on_result(int(state), result.contents if result else None)
        except BaseException:
            # A raising ctypes callback hands the runtime a garbage non-zero value (seen: -1),
            # which 1.2.1+ may read as "pause". Swallow everything and keep returning 0.
            with contextlib.suppress(BaseException):
                log.exception("rkllm_callback_failed")
        return 0 if self.spec.callback_returns_int else None

    # ---- running --------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether run() is inside rkllm_run, as tracked here (the C is_running is contradictory)."""
        return self._running

    def run(self, inp: Structure, infer: Structure, *, use_async: bool = False) -> int:
        """rkllm_run (or rkllm_run_async) on the calling thread; returns the C return code as is."""
        name = "rkllm_run_async" if use_async else "rkllm_run"
        fn = self.lib.fn(name)
        with self._run_lock:
            h = self._handle()
            self._running = True
            try:
                rc: int = fn(h, byref(inp), byref(infer), None)
            finally:
                self._running = False
        return rc

    def abort(self) -> int | None:
        """rkllm_abort. Any thread; returns the C code, or None when no model is open."""
        with self._h_lock:
            if not self._h.value:
                return None
            rc: int = self.lib.fn("rkllm_abort")(self._h)
            return rc

    def native_is_running(self) -> int:
        """The raw rkllm_is_running code. 1.1 to 1.2.3 headers say 0 = running, 1.3.0 says 1 = running."""
        rc: int = self.lib.fn("rkllm_is_running")(self._handle())
        return rc

    # ---- KV cache ---------------------------------------------------------------------------------

    def clear_kv_cache(
        self, keep_system_prompt: bool, ranges: Sequence[tuple[int, int]] | None = None
    ) -> None:
        """Clear the whole cache (ranges None) or, 1.2.1+, per-batch [start, end) ranges."""
        fn = self.lib.fn("rkllm_clear_kv_cache")
        if len(fn.argtypes) == 2:
            if ranges is not None:
                raise LibraryVersionError(
                    f"rkllm_clear_kv_cache with ranges requires runtime ≥ 1.2.1, loaded {self.lib.version}"
                )
            self._check("rkllm_clear_kv_cache", fn(self._handle(), int(keep_system_prompt)))
            return
        if ranges is None:
            rc = fn(self._handle(), int(keep_system_prompt), None, None)
        else:
            start = (c_int * len(ranges))(*(r[0] for r in ranges))
            end = (c_int * len(ranges))(*(r[1] for r in ranges))
            rc = fn(self._handle(), int(keep_system_prompt), start, end)
        self._check("rkllm_clear_kv_cache", rc)

    def get_kv_cache_size(self, n_batch: int = 1) -> list[int]:
        """Current KV-cache length of each batch (1.2.1+)."""
        fn = self.lib.fn("rkllm_get_kv_cache_size")
        out = (c_int * max(1, n_batch))()
        self._check("rkllm_get_kv_cache_size", fn(self._handle(), out))
        return list(out)

    # ---- templates, tools, adapters -----------------------------------------------------------------

    def set_chat_template(self, system_prompt: str, prompt_prefix: str, prompt_postfix: str) -> None:
        fn = self.lib.fn("rkllm_set_chat_template")
        args = (system_prompt.encode(), prompt_prefix.encode(), prompt_postfix.encode())
        self._check("rkllm_set_chat_template", fn(self._handle(), *args))

    def set_function_tools(self, system_prompt: str, tools_json: str, tool_response_str: str) -> None:
        """Function calling (1.2.1+): ``tools_json`` is a JSON array of tool definitions."""
        fn = self.lib.fn("rkllm_set_function_tools")
        args = (system_prompt.encode(), tools_json.encode(), tool_response_str.encode())
        self._check("rkllm_set_function_tools", fn(self._handle(), *args))

    def load_lora(self, path: Path, name: str, scale: float = 1.0) -> None:
        fn = self.lib.fn("rkllm_load_lora")
        adapter = RKLLMLoraAdapter(str(path).encode(), name.encode(), scale)
        self._check("rkllm_load_lora", fn(self._handle(), byref(adapter)))

    def load_prompt_cache(self, path: Path) -> None:
        fn = self.lib.fn("rkllm_load_prompt_cache")
        self._check("rkllm_load_prompt_cache", fn(self._handle(), str(path).encode()))

    def release_prompt_cache(self) -> None:
        fn = self.lib.fn("rkllm_release_prompt_cache")
        self._check("rkllm_release_prompt_cache", fn(self._handle()))

    def set_cross_attn_params(
        self,
        k_cache: Sequence[float],
        v_cache: Sequence[float],
        mask: Sequence[float],
        positions: Sequence[int],
        num_tokens: int,
    ) -> None:
        """Encoder K/V for cross-attention models (1.2.1+). The data is copied and kept alive."""
        fn = self.lib.fn("rkllm_set_cross_attn_params")
        bufs = (
            (c_float * len(k_cache))(*k_cache),
            (c_float * len(v_cache))(*v_cache),
            (c_float * len(mask))(*mask),
            (c_int32 * len(positions))(*positions),
        )
        p = RKLLMCrossAttnParam(
            ctypes.cast(bufs[0], POINTER(c_float)),
            ctypes.cast(bufs[1], POINTER(c_float)),
            ctypes.cast(bufs[2], POINTER(c_float)),
            ctypes.cast(bufs[3], POINTER(c_int32)),
            num_tokens,
        )
        self._check("rkllm_set_cross_attn_params", fn(self._handle(), pointer(p)))
        self._keep = [bufs, p]
