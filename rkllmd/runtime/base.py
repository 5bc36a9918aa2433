"""The runtime interface the inference loop sees, and what each kind of runtime declares.

A runtime owns one loaded model. Every method except ``abort`` is called on the inference
thread only, one call at a time; ``abort`` may be called from any thread while ``generate``
blocks. A runtime never touches MQTT: it hands text deltas to a sink and returns a result.

A :class:`TokenCounter` counts apart from the loaded runtime, on any thread. A
:class:`RuntimeKind` is what a runtime package declares (``KIND``) for rkllmd.runtime.registry.
A :class:`Table` is a model's settings as the worker process sees them. What a generation is
asked to do (:class:`~rkllmd.generation.GenerateInput` and its parts) is rkllmd.generation's.
Nothing here imports pydantic or structlog: the worker process imports this module.

The methods marked :func:`served` are the ones the worker process serves: the daemon's proxy
(rkllmd.runtime.worker) forwards each as one generic call over the worker pipe, and the worker
refuses any other name. A method added to the interface with the mark reaches every runtime
through the worker with no change to the pipe, the proxy or the worker.
"""

from __future__ import annotations

import abc
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol, TypeVar

from rkllmd import logface, toolcalls
from rkllmd.embedding import EmbedResult, Progress, RerankResult
from rkllmd.generation import GenerateInput

if TYPE_CHECKING:
    from rkllmd.config_base import ModelCommon, Strict

log = logface.get_logger("rkllmd.runtime")

_F = TypeVar("_F", bound=Callable[..., Any])
_SERVED = "__rkllmd_served__"


def served(method: _F) -> _F:
    """Marks a :class:`Runtime` method the worker process serves (the module's docstring).

    Its arguments and return value cross the pipe pickled, so they are plain data; one argument
    may be a :data:`TokenSink`, whose tokens then come back while the call runs. Methods that
    need no round trip stay unmarked: ``open`` and ``close`` (the worker's own start and end),
    ``abort`` (its own pipe, any thread), ``context_length`` and ``describe`` (known once open).
    """
    setattr(method, _SERVED, True)
    return method


def served_methods(cls: type) -> frozenset[str]:
    """The names of the methods ``cls`` or a class it derives from marks :func:`served`; a
    runtime that overrides a served method without the mark still serves it."""
    return frozenset(
        name for klass in cls.__mro__ for name, v in vars(klass).items() if getattr(v, _SERVED, False)
    )


@dataclass
class Perf:
    """Counts and timings of one generation as the runtime reports them (None when unknown)."""

    prompt_tokens: int | None = None
    completion_tokens: int = 0
    prefill_ms: float | None = None
    decode_ms: float | None = None
    memory_mb: float | None = None
    images: int = 0  # images the run took, and their time before the prompt (docs/VISION.md)
    image_decode_ms: float | None = None  # decoding and preprocessing
    image_encode_ms: float | None = None  # the vision encoder


FinishReason = Literal["stop", "length", "aborted"]


@dataclass
class GenerateResult:
    """How a generation ended. ``aborted`` means abort() was called; the loop knows why."""

    finish_reason: FinishReason
    perf: Perf


# Called for every decoded text delta, in order, with whole UTF-8 characters only.
# It runs on whatever thread the runtime delivers tokens on and must return quickly.
TokenSink = Callable[[str, int | None], None]


def check_context(rt: Runtime, inp: GenerateInput, model: str | None) -> int | None:
    """The prompt's length in tokens where ``rt`` can count it; ContextExceeded when the model's
    context would leave no room for an answer."""
    from rkllmd.errors import ContextExceeded

    n_prompt = rt.prompt_tokens(inp)
    ctx = rt.context_length
    if n_prompt is not None and ctx is not None and n_prompt >= ctx:
        raise ContextExceeded(
            f"prompt is {n_prompt} tokens but model {model!r} has a context of {ctx}: "
            f"{n_prompt - ctx + 1} token(s) too many",
            prompt_tokens=n_prompt,
            context_length=ctx,
        )
    return n_prompt


class Runtime(abc.ABC):
    """One loaded model behind one runtime."""

    #: short name used in config (``runtime = "rkllm"``) and in the info topic
    kind: str = "base"
    #: True when ``generate`` calls the sink on the thread that called it (the worker proxy reads
    #: its pipe there), never on a native callback thread: the loop may then publish from the sink.
    sink_on_caller: bool = False

    @abc.abstractmethod
    def open(self) -> None:
        """Load the model; raises ModelLoadError / RuntimeNotInstalled / LibraryVersionError."""

    @served
    @abc.abstractmethod
    def generate(self, inp: GenerateInput, sink: TokenSink) -> GenerateResult:
        """Run one generation to its end, feeding text deltas to ``sink``; raises RuntimeFailure."""

    @served
    def generate_checked(self, inp: GenerateInput, sink: TokenSink, model: str | None) -> GenerateResult:
        """:func:`check_context`, then :meth:`generate`, its result counting the prompt when the
        runtime reported no count: what the loop calls, on every runtime. On the worker proxy it
        is one call to the worker, which checks there: no round trip, two process wake-ups, for the
        count."""
        n_prompt = check_context(self, inp, model)
        result = self.generate(inp, sink)
        if result.perf.prompt_tokens is None:  # as the loop falls back to its own count
            result.perf.prompt_tokens = n_prompt
        return result

    @abc.abstractmethod
    def abort(self) -> None:
        """Ask a running generate() to stop soon. Any thread; a no-op when idle."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the model and all native memory. Idempotent."""

    @served
    def embed(self, texts: Sequence[str], progress: Progress) -> EmbedResult:
        """One L2-normalised vector per text, in order, from a model opened as ``kind =
        "embedding"`` (docs/EMBEDDINGS.md); ``progress`` gets embedding.PROGRESS_MARK once per text
        done. abort() ends it between texts (``aborted``). The texts are as the model reads them
        (its ``input_template`` applied) and each fits its context (the job checks)."""
        from rkllmd.errors import RuntimeFailure

        raise RuntimeFailure(f"the {self.kind} runtime does not compute embeddings")

    @served
    def score(self, prompts: Sequence[str], progress: Progress) -> RerankResult:
        """Reranking's native part, from a model opened as ``kind = "rerank"``: for each prompt
        (a query and a document in the model's ``rerank_template``, rendered by the rerank job),
        P(yes) from the logits of its last position at the model's two answer tokens
        (``rerank_tokens``; docs/EMBEDDINGS.md). ``progress`` and abort as for embed."""
        from rkllmd.errors import RuntimeFailure

        raise RuntimeFailure(f"the {self.kind} runtime does not rerank")

    @served  # noqa: B027 - an optional hook, empty on purpose
    def clear_cache(self, keep_system_prompt: bool = True) -> None:
        """Drop conversation state (KV cache) kept between generations; a no-op by default."""

    @served
    def count_tokens(self, text: str) -> int | None:
        """Tokens ``text`` takes in this model, or None when no tokenizer is available."""
        return None

    @served
    def prompt_tokens(self, inp: GenerateInput) -> int | None:
        """Tokens the whole rendered prompt of ``inp`` takes, or None when unknown."""
        return None

    @property
    def context_length(self) -> int | None:
        """The context window of the loaded model in tokens, or None when unknown."""
        return None

    @property
    def tool_format(self) -> toolcalls.ToolFormat:
        """How the loaded model writes tool calls (its ``tool_format``, ``auto`` resolved when it
        opened): the loop puts this format's parser in front of the sink. Hermes by default."""
        return toolcalls.get("hermes")

    def describe(self) -> dict[str, Any]:
        """Facts for the info topic: runtime kind, version, library path and the like."""
        return {"runtime": self.kind}


class TokenCounter(Protocol):
    """Counts tokens with one model's tokenizer, apart from its runtime; any thread."""

    def count(self, text: str) -> int | None:
        """Tokens ``text`` takes, or None when the tokenizer cannot be had."""
        ...


class LazyCounter:
    """A TokenCounter that loads its tokenizer on the first count, once.

    ``load`` returns the counting function, or None when there is nothing to count with; a load
    that raises is logged and counts nothing from then on. ``source`` names it in that log line.
    """

    def __init__(self, load: Callable[[], Callable[[str], int] | None], source: str) -> None:
        self._load: Callable[[], Callable[[str], int] | None] | None = load
        self._fn: Callable[[str], int] | None = None
        self._source = source
        self._lock = threading.Lock()

    def count(self, text: str) -> int | None:
        with self._lock:
            if self._load is not None:
                load, self._load = self._load, None
                try:
                    self._fn = load()
                except Exception as exc:
                    log.warning("no tokenizer for token counting", tokenizer=self._source, error=str(exc))
            fn = self._fn
        return fn(text) if fn is not None else None


class Table:
    """A configuration table as plain data: the worker process's stand-in for its pydantic model.

    The parent turns a model's settings (and the tables of the configuration its runtime reads)
    into tables (rkllmd.runtime.worker.table), so the worker unpickles them without importing
    pydantic. The attribute names and values are the model's own, a nested table is a Table
    too; read-only. A runtime reads its settings only as attributes, never through the model's
    methods, so the same code runs on either.
    """

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_values":
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"the table has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"a settings table is read-only (setting {name!r})")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"a settings table is read-only (deleting {name!r})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Table, (self._values,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Table) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._values)))

    def __repr__(self) -> str:
        return "Table(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"


@dataclass(frozen=True)
class RuntimeKind:
    """One kind of runtime, as its package declares it: what ``runtime = "<name>"`` stands for.

    ``settings`` is the model of a ``[models.X]`` table of this kind; ``open_runtime(name, cfg,
    settings)`` builds its runtime in this process, closed, from the model's table and the whole
    configuration (rkllmd.settings.Settings, which no runtime imports); heavy imports happen
    there, not at import. In a worker process ``cfg`` and ``settings`` are :class:`Table` s of
    the same names, so ``open_runtime`` lives in a module that imports no pydantic (the
    package's ``__init__``) and the runtime only reads its settings' attributes.
    ``load_problems(name, cfg)`` lists what would stop the model from loading, without loading it;
    ``token_counter(cfg)`` gives a counter for the model, or None when it cannot count.
    ``sigill_hint`` says what an illegal instruction in its native code means. ``sampling``
    names the sampling options (rkllmd.generation.SAMPLING_OPTIONS) its runtime honours; a
    request may carry the others, which it then ignores. ``table`` is the model of the kind's
    runtime-wide table, ``[<name>]`` in the configuration (RKLLM's ``[rkllm]``), or None:
    rkllmd.settings gives ``Settings`` a section for it, and ``open_runtime`` reads it as
    ``settings.<name>`` (a worker gets that table alone).
    """

    name: str
    settings: type[ModelCommon]
    open_runtime: Callable[[str, Any, Any], Runtime]
    load_problems: Callable[[str, Any], list[str]]
    token_counter: Callable[[Any], TokenCounter | None]
    sigill_hint: str | None = None
    sampling: frozenset[str] = frozenset()
    table: type[Strict] | None = None

    def crash_hint(self, exitcode: int | None) -> str | None:
        """What a worker's death with ``exitcode`` means for the user, or None when it says nothing."""
        # An illegal instruction is a build for another CPU, never a bad prompt: retrying cannot help.
        return self.sigill_hint if exitcode == -signal.SIGILL else None
