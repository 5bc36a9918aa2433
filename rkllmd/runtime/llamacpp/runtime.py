"""llama.cpp through llama-cpp-python: any GGUF model on the CPU, and the embedded SmolLM2 demo.

``llama_cpp`` is imported only in :meth:`LlamaCppRuntime.open`, so rkllmd runs without the
``llamacpp`` extra until a model that needs it is opened. Every method except ``abort`` runs on
the inference-loop thread, one call at a time (see :mod:`rkllmd.runtime.base`).
"""

from __future__ import annotations

import codecs
import ctypes
import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rkllmd import logface, toolcalls
from rkllmd.errors import ContextExceeded, ImagesUnsupported, ModelLoadError, RuntimeFailure
from rkllmd.generation import ChatMessage, GenerateInput
from rkllmd.runtime.base import FinishReason, GenerateResult, Perf, Runtime, TokenSink
from rkllmd.runtime.llamacpp._lib import (
    INSTALL_EMBEDDED,
    demote_native_errors,
    embedded_model_path,
    import_llama_cpp,
    route_native_logs,
)
from rkllmd.runtime.llamacpp.grammar import grammar_for, llama_class
from rkllmd.runtime.llamacpp.sampling import SAMPLING
from rkllmd.runtime.llamacpp.vectors import LlamaVectors, context_options
from rkllmd.runtime.llamacpp.vision import LlamaVision, Prefilled

if TYPE_CHECKING:  # in a worker process ``cfg`` is a Table of the same names (rkllmd.runtime.base)
    from rkllmd.runtime.llamacpp.settings import LlamaCppModelSettings

log = logface.get_logger("llamacpp")

# Used only when a GGUF file carries no chat template of its own.
_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def default_threads() -> int:
    """Threads when the config sets none: every CPU this process may use, at most four.

    llama-cpp-python's own default (half the CPUs) leaves a 2-core board at one thread, which
    decodes about a third slower; beyond four (the big cores of an RK3588) threads stop helping.
    """
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


class LlamaCppRuntime(LlamaVectors, Runtime):
    """One GGUF model loaded through llama-cpp-python; its ``kind`` decides what its context can
    do (generate, embed or score: vectors.py)."""

    kind = "llamacpp"

    def __init__(self, name: str, cfg: LlamaCppModelSettings) -> None:
        self.name = name
        self.cfg = cfg
        self.model_path: Path | None = cfg.path
        self._lib: Any = None
        self._llm: Any = None
        self._formatter: Any = None
        self._template_has_tools = False  # the GGUF's template renders ``tools`` itself
        # How the model writes calls: as configured; ``auto`` is resolved again from the GGUF's
        # template in open(). _visible: ids of the format's special tokens, streamed as text.
        self._tool_format = toolcalls.choose(
            cfg.tool_format, None, f"{name} {cfg.path.name if cfg.path else ''}"
        )
        self._visible: frozenset[int] = frozenset()
        self._opens_thought: dict[str, bool] = {}  # its prompt ends inside a thought (thought_opens)
        self._abort = threading.Event()
        self._state_lock = threading.Lock()
        self._running = False
        self._piece_buf = ctypes.create_string_buffer(256)
        self._abort_cb: Any = None
        self._vocab: Any = None
        self._vision: LlamaVision | None = None  # its mmproj, if it has one (docs/VISION.md)
        #: token ids of the last generation's completion (without the end-of-generation token)
        self.last_completion_tokens: tuple[int, ...] = ()

    # --- lifecycle (inference-loop thread) ----------------------------------------------------

    def open(self) -> None:
        """Load the model (inference-loop thread); ModelLoadError / RuntimeNotInstalled on failure."""
        if self._llm is not None:
            return
        path = self.cfg.path or embedded_model_path()
        if path is None:
            raise ModelLoadError(
                f"model {self.name!r} has no path and the embedded SmolLM2 model is not installed: "
                f"{INSTALL_EMBEDDED}",
                model=self.name,
            )
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist", model=self.name, path=str(path))
        lib = import_llama_cpp()
        route_native_logs(lib)
        n_threads = self.cfg.n_threads or default_threads()
        llm: Any = None
        try:
            llm = llama_class(lib)(
                model_path=str(path),
                n_ctx=self.cfg.max_context_len,
                n_threads=n_threads,
                n_threads_batch=n_threads,
                seed=self.cfg.seed if self.cfg.seed >= 0 else lib.LLAMA_DEFAULT_SEED,
                verbose=False,
                **context_options(lib, self.cfg, self.cfg.max_context_len),
            )
            formatter = self._make_formatter(lib, llm)
            mmproj = getattr(self.cfg, "mmproj", None)
            vision = LlamaVision(self.name, mmproj, lib, llm, self.cfg.max_images) if mmproj else None
        except ModelLoadError:
            llm.close()
            raise
        except Exception as exc:
            if llm is not None:
                llm.close()
            raise ModelLoadError(f"llama.cpp could not load {path}: {exc}", path=str(path)) from exc
        self._lib, self._llm, self._formatter, self.model_path = lib, llm, formatter, path
        self._vision = vision
        template = llm.metadata.get("tokenizer.chat_template") or None
        self._template_has_tools = "tools" in str(template or "")
        self._tool_format = fmt = toolcalls.choose(self.cfg.tool_format, template, f"{self.name} {path.name}")
        self._visible = _single_tokens(llm, fmt.visible_tokens)
        log.info("tool_format", model=self.name, format=fmt.name, setting=self.cfg.tool_format)
        self._opens_thought = thought_opens(formatter, self.cfg.thinking_tags[0])
        self._vocab = lib.llama_model_get_vocab(llm.model)
        self._abort_cb = lib.ggml_abort_callback(self._abort_requested)
        log.info("model loaded", model=self.name, path=str(path), n_ctx=llm.n_ctx(), threads=llm.n_threads)

    @staticmethod
    def _make_formatter(lib: Any, llm: Any) -> Any:
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            log.warning("model has no chat template; using ChatML", path=llm.model_path)

        def text_of(token: int) -> str:
            return "" if token < 0 else str(llm.detokenize([token], special=True).decode("utf-8", "replace"))

        return lib.llama_chat_format.Jinja2ChatFormatter(
            template=template or _CHATML,
            eos_token=text_of(llm.token_eos()),
            bos_token=text_of(llm.token_bos()),
            add_generation_prompt=True,
        )

    def close(self) -> None:
        """Free the model and its context (inference-loop thread). Idempotent."""
        llm, self._llm = self._llm, None
        self._vision = None  # its mtmd context is freed with the model
        if llm is not None:
            llm.close()
            log.info("model closed", model=self.name)

    def _require(self) -> Any:
        if self._llm is None:
            raise RuntimeFailure(f"model {self.name!r} is not open")
        return self._llm

    # --- tokens ---------------------------------------------------------------------------

    def render(self, inp: GenerateInput) -> str:
        """The prompt text ``inp`` becomes through the model's own chat template.

        Tools go to the template as ``tools=`` when it renders them (Qwen2.5/Qwen3, Llama 3.1, ...);
        a template that ignores them (SmolLM2, plain ChatML) gets the model's tool format's system
        section instead, and tool turns as that format's text, so no call or result is lost.
        The request's ``think`` goes to the template as ``enable_thinking``.
        """
        self._require()
        system = inp.system if inp.system is not None else self.cfg.system_prompt
        native, fmt = self._template_has_tools, self._tool_format
        tools = list(inp.active_tools)
        if tools and not native:
            system = fmt.render_tools(system, tools)
        messages = [_message(m, native, fmt) for m in inp.messages if m.role != "system"]
        if system is not None:
            messages.insert(0, {"role": "system", "content": system})
        extra: dict[str, Any] = {"tools": tools} if tools and native else {}
        # The thinking switch of Qwen3-style templates (a template without one ignores it);
        # Jinja2ChatFormatter hands extra keywords to the template.
        extra["enable_thinking"] = inp.thinking.on
        return str(self._formatter(messages=messages, **extra).prompt)

    def _prompt_ids(self, inp: GenerateInput) -> list[int]:
        # The template writes any BOS itself, so tokenize special tokens and add none.
        return list(self._require().tokenize(self.render(inp).encode("utf-8"), add_bos=False, special=True))

    def count_tokens(self, text: str) -> int | None:
        """Tokens ``text`` takes with the model's tokenizer (inference-loop thread)."""
        return len(self._require().tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def prompt_tokens(self, inp: GenerateInput) -> int | None:
        """Tokens of the fully rendered chat prompt, exactly as generate() feeds it."""
        return len(self._prompt_ids(inp))

    def _piece(self, token: int) -> bytes:
        """The bytes of one token (possibly part of a UTF-8 character); control tokens are empty."""
        vocab = self._vocab
        special = token in self._visible  # a control token of the call syntax is text here
        n = self._lib.llama_token_to_piece(vocab, token, self._piece_buf, len(self._piece_buf), 0, special)
        if n < 0:
            self._piece_buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(vocab, token, self._piece_buf, -n, 0, special)
        return bytes(self._piece_buf.raw[:n])

    @property
    def context_length(self) -> int | None:
        """The real n_ctx of the loaded context, or None before open()."""
        return int(self._llm.n_ctx()) if self._llm is not None else None

    # --- generation -----------------------------------------------------------------------

    def generate(self, inp: GenerateInput, sink: TokenSink) -> GenerateResult:
        """Run one generation on the inference-loop thread, feeding whole-character deltas to ``sink``.

        The KV cache keeps the previous prompt, so a prompt sharing a prefix with it (same
        system prompt, a conversation growing turn by turn) only evaluates the new tokens.
        """
        llm, lib, cfg, s = self._require(), self._lib, self.cfg, inp.sampling
        pre = self._prefill_images(inp) if inp.images else None
        prompt = pre.ids if pre is not None else self._prompt_ids(inp)
        n_ctx = llm.n_ctx()
        if len(prompt) >= n_ctx:
            raise ContextExceeded(f"prompt takes {len(prompt)} tokens; the context holds {n_ctx}")
        budget = min(inp.max_tokens, n_ctx - len(prompt))
        stops = [x for x in s.stop if x]
        seed = s.value("seed", cfg)
        llm.set_seed(seed if seed >= 0 else lib.LLAMA_DEFAULT_SEED)
        grammar = grammar_for(inp, self._tool_format)  # before the run, so a bad schema costs no evaluation
        knobs = {native: s.value(name, cfg) for name, native in SAMPLING.items()}
        tokens = llm.generate(prompt, **knobs, reset=True, grammar=grammar)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        completion: list[int] = []
        held = ""  # decoded text that might be the start of a stop string
        finish: FinishReason = "length"
        with self._state_lock:
            self._abort.clear()
            self._running = True
        # The prompt is evaluated in one long llama_decode; llama.cpp's abort callback lets
        # abort() cut it short. It costs a Python call per graph node, so it is set only then.
        lib.llama_set_abort_callback(llm.ctx, self._abort_cb, None)
        lib.llama_perf_context_reset(llm.ctx)
        t_start = time.perf_counter()
        t_first: float | None = None
        try:
            for token in tokens:
                if t_first is None:
                    t_first = time.perf_counter()
                    lib.llama_set_abort_callback(llm.ctx, lib.ggml_abort_callback(), None)
                if self._abort.is_set():
                    finish = "aborted"
                    break
                if lib.llama_vocab_is_eog(self._vocab, token):
                    finish = "stop"
                    break
                completion.append(token)
                held += decoder.decode(self._piece(token))
                out, held, hit = _split_stop(held, stops)
                if out:
                    sink(out, token)
                if hit:
                    finish = "stop"
                    break
                if len(completion) >= budget:
                    break
        except RuntimeError as exc:
            if not self._abort.is_set():
                llm.reset()
                raise RuntimeFailure(f"llama.cpp failed during generation: {exc}") from exc
            finish = "aborted"  # llama_decode gave up inside the prompt; its memory is cleared
            lib.llama_synchronize(llm.ctx)  # settles llama.cpp's perf bookkeeping
            llm.reset()
        finally:
            tokens.close()
            t_end = time.perf_counter()
            if pre is not None:
                LlamaVision.forget(llm, pre.spans)
            lib.llama_set_abort_callback(llm.ctx, lib.ggml_abort_callback(), None)
            with self._state_lock:
                self._running = False
                demote_native_errors(False)
        if held and finish != "aborted":
            sink(held, completion[-1] if completion else None)
        self.last_completion_tokens = tuple(completion)
        perf = self._perf(len(prompt), len(completion), t_start, t_first, t_end, pre)
        return GenerateResult(finish_reason=finish, perf=perf)

    def _prefill_images(self, inp: GenerateInput) -> Prefilled:
        """Evaluate the prompt with its images (the model's mmproj); refused without one."""
        vision = self._vision
        if vision is None:
            raise ImagesUnsupported(
                f"model {self.name!r} does not take images: it has no mmproj (docs/VISION.md)",
                model=self.name,
            )
        messages, pictures, decode_ms = vision.prepare(inp.messages)  # each image in its own turn
        text = self.render(dataclasses.replace(inp, messages=messages))
        return vision.prefill(self._require(), text, pictures, decode_ms)

    def _abort_requested(self, _data: Any) -> bool:
        # Called by llama.cpp from inside llama_decode (its compute threads) between graph nodes.
        if self._abort.is_set():
            demote_native_errors(True)
            return True
        return False

    def _perf(
        self, n_prompt: int, n_completion: int, t0: float, t1: float | None, t2: float, pre: Prefilled | None
    ) -> Perf:
        """Timings from llama.cpp's own counters; wall-clock when they did not see a prompt batch.

        prefill_ms is the prompt evaluation (up to the logits of the first token), decode_ms the
        single-token evaluations after it. A prompt found in the KV cache but for its last
        token is evaluated as a single token, which llama.cpp counts as decode; then both
        figures come from the wall clock (first token, and the rest).
        """
        perf_context = getattr(self._lib, "llama_perf_context", None)
        data = perf_context(self._llm.ctx) if perf_context is not None else None
        if data is not None and data.t_p_eval_ms > 0:
            prefill, decode = float(data.t_p_eval_ms), float(data.t_eval_ms)
        else:
            t1 = t2 if t1 is None else t1
            prefill, decode = (t1 - t0) * 1e3, (t2 - t1) * 1e3
        if pre is None:
            return Perf(n_prompt, n_completion, prefill, decode)
        # the prompt and the images' embeddings went in before generate(): its prefill is the rest
        return Perf(
            n_prompt,
            n_completion,
            prefill + pre.prefill_ms,
            decode,
            None,
            len(pre.spans),
            pre.decode_ms,
            pre.encode_ms,
        )

    def _set_running(self, running: bool) -> None:
        """embed/score start (abort() from now on counts) or end; inference thread."""
        with self._state_lock:
            if running:
                self._abort.clear()
            self._running = running

    def abort(self) -> None:
        """Ask a running generate() to stop after the current token. Any thread; no-op when idle."""
        with self._state_lock:
            if self._running:
                self._abort.set()

    def clear_cache(self, keep_system_prompt: bool = True) -> None:
        """Forget the cached prompt (inference-loop thread); the next prompt is evaluated in full.

        llama.cpp keeps no conversation of its own here, only a prefix cache of the last prompt,
        so dropping all of it (system prompt included) costs speed, not content.
        """
        if self._llm is not None:
            self._llm.reset()

    @property
    def tool_format(self) -> toolcalls.ToolFormat:
        return self._tool_format

    def describe(self) -> dict[str, Any]:
        """Runtime kind, llama-cpp-python version, model path, n_ctx and tool format for the info topic."""
        info: dict[str, Any] = {
            "runtime": self.kind,
            "model_path": str(self.model_path or ""),
            "tool_format": self._tool_format.name,
        }
        if self._lib is not None:
            info["version"] = str(getattr(self._lib, "__version__", "unknown"))
        if self._llm is not None:
            info["n_ctx"] = int(self._llm.n_ctx())
            info["n_threads"] = int(self._llm.n_threads)
            info["thought_opens_in_prompt"] = dict(self._opens_thought)
        return info


def thought_opens(formatter: Any, open_tag: str) -> dict[str, bool]:
    """Whether the template's generation prompt opens the thought block itself (DeepSeek-R1-
    Distill's, Qwen3-Thinking-2507's end with ``<think>\n``), with thinking asked for and not:
    the model's output then starts inside the thought (rkllmd/thinking.py, ``starts_open``)."""
    out = {}
    for key, on in (("think", True), ("no_think", False)):
        try:
            prompt = str(formatter(messages=[{"role": "user", "content": "hi"}], enable_thinking=on).prompt)
        except Exception:  # a template that refuses a bare user turn tells nothing either way
            prompt = ""
        out[key] = prompt.rstrip().endswith(open_tag)
    return out


def _split_stop(text: str, stops: list[str]) -> tuple[str, str, bool]:
    """Split ``text`` into (safe to emit, held back, stop string found)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], "", True
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    return text[: len(text) - hold], text[len(text) - hold :], False


def _single_tokens(llm: Any, texts: tuple[str, ...]) -> frozenset[int]:
    """The ids of those ``texts`` that are one token each in this model's vocabulary."""
    ids = (llm.tokenize(t.encode(), add_bos=False, special=True) for t in texts)
    return frozenset(i[0] for i in ids if len(i) == 1)


def _message(m: ChatMessage, native: bool, fmt: toolcalls.ToolFormat) -> dict[str, Any]:
    """One turn for the chat template: tool calls and results as the template's own fields when it
    renders tools (``native``), else as the format's text in the content."""
    if native:
        out: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:  # ids as the template takes them (Mistral's refuse all but 9 letters and digits)
            out["tool_calls"] = [{**c.as_dict(), "id": fmt.template_call_id(c.id)} for c in m.tool_calls]
        if m.role == "tool":
            out["tool_call_id"] = None if m.tool_call_id is None else fmt.template_call_id(m.tool_call_id)
            if m.name:
                out["name"] = m.name
        return out
    if m.role == "tool":
        return {"role": "user", "content": fmt.render_tool_result(m)}
    if not m.tool_calls:
        return {"role": m.role, "content": m.content}
    return {"role": m.role, "content": fmt.render_call_turn(m)}
