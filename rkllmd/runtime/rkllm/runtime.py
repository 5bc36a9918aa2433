"""RkllmRuntime: one .rkllm model on the Rockchip NPU through librkllmrt.so (ctypes).

Threads: open/generate/clear_cache/close run on the inference loop's thread, one at a time;
rkllm_run blocks that thread and the runtime delivers its result callback on it too, so the
sink is called there. abort() may come from any thread.

What it is handed lives beside it: the chat template and prompt text (``prompt.py``), the
native parameter structs (``param.py``), the prompt cache it holds (``cacheslot.py``), a run's
result callback (``textrun.py``); its embeddings, rerank scores and tokenizer (``vectors.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
from ctypes import pointer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkllmd import logface, toolcalls
from rkllmd.errors import ModelLoadError, RuntimeCallError, RuntimeFailure
from rkllmd.generation import GenerateInput
from rkllmd.runtime.base import GenerateResult, Perf, Runtime, TokenSink
from rkllmd.runtime.rkllm import _abi_common as c
from rkllmd.runtime.rkllm._capture import fd1_capture
from rkllmd.runtime.rkllm._handle import RkllmHandle
from rkllmd.runtime.rkllm._lib import RkllmLibrary, find_library
from rkllmd.runtime.rkllm.cacheslot import CacheSlot, PrefixRun
from rkllmd.runtime.rkllm.counter import count_with
from rkllmd.runtime.rkllm.param import make_param, raise_nofile, sampling_param
from rkllmd.runtime.rkllm.prompt import (
    CHATML,
    TOOL_RESPONSE,
    choose_format,
    input_role,
    prompt_text,
    render,
    wanted_template,
)
from rkllmd.runtime.rkllm.promptcache import Prefix
from rkllmd.runtime.rkllm.textrun import TextCallback, TextRun
from rkllmd.runtime.rkllm.vectors import VectorModes
from rkllmd.runtime.rkllm.vision import ModelVision

if TYPE_CHECKING:  # in a worker process the settings are Tables of the same names (rkllmd.runtime.base)
    from rkllmd.runtime.rkllm.settings import RkllmModelSettings, RkllmSettings

log = logface.get_logger(__name__)


class RkllmRuntime(TextCallback, VectorModes, Runtime):
    """One model behind librkllmrt.so. The library is found and loaded in open(), not before.

    ``TextCallback`` comes before ``VectorModes``, which only declares ``_on_result``."""

    kind = "rkllm"

    def __init__(
        self,
        name: str,
        cfg: RkllmModelSettings,
        rk: RkllmSettings,
        *,
        capture_stdout: bool = True,
        extra_blob_ids: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        """``capture_stdout`` drains the runtime's fd-1 output into the "rkllm" logger while open;
        ``extra_blob_ids`` extends the table of known library hashes ({blob_id: (release, platform)})."""
        self.name = name
        self.cfg = cfg
        self.rk = rk
        self._capture_stdout = capture_stdout
        self._extra_blob_ids = extra_blob_ids
        self.lib: RkllmLibrary | None = None
        self.handle: RkllmHandle | None = None
        self._captured = False
        self._run: TextRun | None = None
        self._abort_requested = False
        self._generating = False
        self._last_template: tuple[str, str, str] | None = None
        self._last_tools: tuple[str, str] | None = None  # (system, tools JSON) last set natively
        self._tokenizer: Any = None
        self._cache = CacheSlot(name)  # the prompt cache it holds (docs/RKLLM.md#prompt-cache)
        self._tool_format = choose_format(name, cfg)
        self.vision = ModelVision(name, cfg)  # its vision encoder, if it has one (docs/VISION.md)

    # ---- open / close --------------------------------------------------------------------------

    def open(self) -> None:
        """Find and load the library, fill RKLLMParam from the config and rkllm_init the model."""
        if self.handle is not None:
            return
        path = find_library(self.cfg.library, self.rk.library)
        lib = RkllmLibrary.open(path, self.cfg.runtime_version, self._extra_blob_ids)
        if not self.cfg.path.is_file():
            raise ModelLoadError(f"model file {self.cfg.path} does not exist", model=self.name)
        param = make_param(lib, self.cfg, self.name)
        self.vision.set_init_tags(param)  # 1.2.x takes the image tags at init
        raise_nofile()
        if self.rk.log_level is not None:
            os.environ["RKLLM_LOG_LEVEL"] = str(self.rk.log_level)  # read by the runtime at init
        if self._capture_stdout and not self._captured:
            fd1_capture().acquire()
            self._captured = True
        handle = RkllmHandle(lib, self._on_callback)
        try:
            handle.init(param)
        except RuntimeCallError as exc:
            self._release_capture()
            raise ModelLoadError(
                f"rkllm_init failed for {self.cfg.path} (returned {exc.rc}); see the rkllm log lines above "
                "(wrong path, model/runtime version mismatch, max_context_len above the model's limit, "
                "too few CPUs or NPU memory)",
                function="rkllm_init",
                rc=exc.rc,
                model=self.name,
            ) from exc
        self.vision.open(undo=(handle.destroy, self._release_capture))  # its encoder, if it has one
        self.lib, self.handle = lib, handle
        self._last_template = None
        self._last_tools = None
        log.info("rkllm_model_open", model=self.name, version=lib.version, by=lib.detection.method)
        self._cache.open(lib, handle, self.cfg, self.rk)

    def close(self) -> None:
        """rkllm_destroy once and NULL the handle; idempotent. Waits for a running generate()."""
        handle, self.handle = self.handle, None
        self._cache.closed()  # destroy frees a loaded prompt cache
        if handle is not None:
            if handle.running:
                handle.abort()
            handle.destroy()
        self.vision.close()
        self._release_capture()

    def _release_capture(self) -> None:
        if self._captured:
            self._captured = False
            fd1_capture().release()

    # ---- generation ------------------------------------------------------------------------------

    def generate(self, inp: GenerateInput, sink: TokenSink) -> GenerateResult:
        """One rkllm_run on the calling thread; the sink is called on this thread too."""
        handle, lib = self.handle, self.lib
        if handle is None or lib is None:
            raise RuntimeFailure("the RKLLM model is not open", model=self.name)
        self._abort_requested = False
        self._generating = True
        try:
            return self._generate(handle, lib.spec, inp, sink)
        finally:
            self._generating = False

    def _generate(
        self, handle: RkllmHandle, spec: c.AbiSpec, inp: GenerateInput, sink: TokenSink
    ) -> GenerateResult:
        self._apply_template(inp)
        self._apply_tools(inp)
        self._cache.use(handle, self._prefix(), lambda path: self._run_prefix(handle, spec, path))
        if self._abort_requested:  # abort() arrived before the run started
            return GenerateResult(finish_reason="aborted", perf=Perf(completion_tokens=0))
        limit = max(1, inp.max_tokens)
        if self.cfg.max_new_tokens:
            limit = min(limit, self.cfg.max_new_tokens)
        last_role = input_role(self.cfg, inp, self._native_tools)  # "tool" only for JSON results alone
        # A run with images is RKLLM_INPUT_MULTIMODAL; ``images`` keeps its buffers to the end
        # (None when no image goes: an earlier turn's the runtime keeps itself with keep_history,
        # or none that decodes; ``inp`` then has the text marker where such an image was).
        images, inp = (
            self.vision.run_input(spec, inp, self.prompt_text, last_role) if inp.images else (None, inp)
        )
        prompt = self.prompt_text(inp).encode()
        rin = spec.Input()
        if spec.has_role:  # enable_thinking: ignored under a template of ours (prompt.py then)
            rin.role, rin.enable_thinking = last_role.encode(), inp.thinking.on
        elif inp.thinking.on:  # 1.2.0, 1.2.1b1: no switch
            log.warning("rkllm_cannot_switch_thinking", model=self.name)
        rin.input_type = c.RKLLM_INPUT_PROMPT
        rin.prompt_input = prompt
        rin = images.struct if images is not None else rin
        infer = spec.InferParam()
        infer.mode = c.RKLLM_INFER_GENERATE
        infer.keep_history = int(self.cfg.keep_history)
        sampling = None
        if spec.per_run_limits and spec.SamplingParam is not None:
            infer.max_new_tokens = limit
            sampling = sampling_param(spec.SamplingParam, self.cfg, inp)
            infer.sampling_params = pointer(sampling)
        run = TextRun(sink=sink, limit=limit)
        self._run = run
        try:
            rc = handle.run(rin, infer)
        finally:
            self._run = None
        del prompt, sampling, images  # kept alive until here on purpose: the runtime reads them in the run
        if run.sink_error is not None:
            raise run.sink_error
        if run.error or rc != 0:
            detail = f"the runtime reported RKLLM_RUN_ERROR after {run.tokens} tokens" if run.error else ""
            raise RuntimeCallError("rkllm_run", rc if rc != 0 else -1, detail)
        if self._abort_requested:
            reason: Any = "aborted"
        elif run.hit_limit:
            reason = "length"
        else:
            if not run.finished:
                log.warning("rkllm_run_returned_without_finish", model=self.name)
            reason = "stop"
        return GenerateResult(finish_reason=reason, perf=self._perf(run, inp))

    def _perf(self, run: TextRun, inp: GenerateInput) -> Perf:
        if run.perf is None:
            perf = Perf(prompt_tokens=self.prompt_tokens(inp), completion_tokens=run.tokens)
        else:
            prefill_ms, prefill_tokens, gen_ms, _gen_tokens, mem = run.perf
            perf = Perf(prefill_tokens, run.tokens, prefill_ms, gen_ms, mem)
        return self.vision.timed(perf, inp)  # with the images' decode and encode times

    def abort(self) -> None:
        """Ask a running generate() to stop soon. Any thread; a no-op when idle.

        The flag is also checked by the callback at every token, which covers an abort() that
        lands between the start of generate() and the runtime entering rkllm_run.
        """
        if not self._generating:
            return
        self._abort_requested = True
        handle = self.handle
        if handle is not None and handle.running:
            handle.abort()

    # ---- prompt cache (docs/RKLLM.md#prompt-cache) ---------------------------------------------------

    def _prefix(self) -> Prefix | None:
        """What the runtime now puts before every prompt, as last handed to it; None if nothing."""
        tools = self._last_tools[1] if self._last_tools is not None and self._last_tools[1] != "[]" else ""
        if self._last_template is None and not tools:
            return None  # the model's built-in template, which we cannot see
        system, pre, post = self._last_template or ("", "", "")
        prefix = Prefix(system, pre, post, tools)
        return None if prefix.empty else prefix

    def _run_prefix(self, handle: RkllmHandle, spec: c.AbiSpec, path: Path) -> PrefixRun:
        """One run of the prefix alone (an empty user turn, one token) that saves its cache to ``path``."""
        pc = c.RKLLMPromptCacheParam(1, str(path).encode())
        rin = spec.Input()
        if spec.has_role:
            rin.role = b"user"
            rin.enable_thinking = False
        rin.input_type = c.RKLLM_INPUT_PROMPT
        rin.prompt_input = b""
        infer = spec.InferParam()
        infer.mode = c.RKLLM_INFER_GENERATE
        infer.keep_history = int(self.cfg.keep_history)
        infer.prompt_cache_params = pointer(pc)
        if spec.per_run_limits:
            infer.max_new_tokens = 1
        run = TextRun(sink=lambda _text, _token: None, limit=1)
        self._run = run
        try:
            rc = handle.run(rin, infer)
        finally:
            self._run = None
        del pc
        if self.cfg.keep_history:
            with contextlib.suppress(RuntimeCallError):
                handle.clear_kv_cache(True)  # forget the empty turn, keep the system prompt
        tokens = run.perf[1] if run.perf else None
        return PrefixRun(rc, run.error, tokens, self._abort_requested)

    @property
    def prompt_cache_file(self) -> Path | None:
        """The cache file the runtime holds now (prompt_cache on), for tests and the bench."""
        return self._cache.file

    # ---- chat template -----------------------------------------------------------------------------

    @property
    def _native_tools(self) -> bool:
        """Whether the loaded release takes tools itself (rkllm_set_function_tools, 1.2.1+)."""
        return self.lib is not None and self.lib.has("rkllm_set_function_tools")

    def _apply_tools(self, inp: GenerateInput) -> None:
        """Hand the tools to the runtime when they change (1.2.1+); it renders them in the model's
        own format and makes the model write ``<tool_call>`` blocks. Tools gone: an empty list."""
        last = self._last_tools
        if not self._native_tools or (not inp.active_tools and (last is None or last[1] == "[]")):
            return  # no tool API, or no tools now and none left set
        system = inp.system or self.cfg.system_prompt or ""
        wanted = (system, json.dumps(list(inp.active_tools), ensure_ascii=False))
        if wanted == last:
            return
        assert self.handle is not None
        self.handle.set_function_tools(wanted[0], wanted[1], TOOL_RESPONSE)
        log.info("rkllm_tools_set", tools=len(inp.active_tools))
        self._last_tools = wanted

    def _wanted_template(self, inp: GenerateInput) -> tuple[str, str, str] | None:
        return wanted_template(self.cfg, inp, self._native_tools, self._tool_format)

    def _apply_template(self, inp: GenerateInput) -> None:
        wanted = self._wanted_template(inp)
        if wanted is None and self._last_template is not None:
            # No API restores the model's own template; fall back to the configured one without system.
            wanted = render(self.cfg.chat_template or CHATML, "")
        if wanted is None or wanted == self._last_template:
            return
        assert self.handle is not None
        self.handle.set_chat_template(*wanted)
        self._last_template = wanted

    def prompt_text(self, inp: GenerateInput) -> str:
        """The text one run sends as ``prompt_input`` (rkllmd.runtime.rkllm.prompt)."""
        return prompt_text(self.cfg, inp, self._native_tools, self._tool_format)

    # ---- the rest of the interface -----------------------------------------------------------------

    def clear_cache(self, keep_system_prompt: bool = True) -> None:
        """rkllm_clear_kv_cache(h, keep, NULL, NULL); a no-op when no model is open."""
        if self.handle is not None:
            self.handle.clear_kv_cache(keep_system_prompt)

    def kv_cache_size(self) -> int:
        """Current KV-cache length (1.2.1+; LibraryVersionError on older runtimes)."""
        if self.handle is None:
            raise RuntimeFailure("the RKLLM model is not open", model=self.name)
        return self.handle.get_kv_cache_size(1)[0]

    def count_tokens(self, text: str) -> int | None:
        tok = self._tok()
        if tok is None:
            return None
        return count_with(tok, text)

    def prompt_tokens(self, inp: GenerateInput) -> int | None:
        """Tokens of what one run sends: the template strings, the system prompt and the last user turn.

        An estimate: the runtime renders the model's own template, which we cannot see.
        """
        if self._tok() is None:
            return None
        tpl = self._wanted_template(inp)
        parts = [*(tpl or ()), self.prompt_text(inp)]
        return sum(self.count_tokens(p) or 0 for p in parts if p) + self.vision.extra_tokens(inp)

    @property
    def context_length(self) -> int | None:
        return self.cfg.max_context_len

    @property
    def library_path(self) -> Path | None:
        return self.lib.path if self.lib is not None else None

    @property
    def tool_format(self) -> toolcalls.ToolFormat:
        return self._tool_format

    def describe(self) -> dict[str, Any]:
        det = self.lib.detection if self.lib is not None else None
        return {
            "runtime": self.kind,
            "model": self.name,
            "version": det.version if det else None,
            "version_source": det.method if det else None,
            "abi_family": self.lib.spec.family if self.lib is not None else None,
            "library": str(det.path) if det else None,
            "context_length": self.context_length,
            "tool_format": self._tool_format.name,
        }
