"""Grammars on llama.cpp: a format's JSON schema or tool calls as GBNF, and lazy grammars.

llama-cpp-python 0.3.36's ``Llama.generate`` takes a grammar that holds the output from its first
token. A call the model *chooses* to make needs llama.cpp's lazy grammar
(``llama_sampler_init_grammar_lazy_patterns``), which waits for a trigger pattern; the binding
has it at the C level only. :func:`llama_class` gives a ``Llama`` whose sampler chain takes a
:class:`LazyGrammar` where ``generate`` takes a grammar. Thread: the inference-loop thread (the
sampler is built when ``generate``'s iterator starts).
"""

from __future__ import annotations

import ctypes
import importlib
import json
from dataclasses import dataclass
from functools import cache
from typing import Any

from rkllmd import logface
from rkllmd.errors import RequestError
from rkllmd.generation import GenerateInput
from rkllmd.toolcalls import CallGrammar, ToolFormat, format_schema

log = logface.get_logger("llamacpp")


@dataclass(frozen=True)
class LazyGrammar:
    """GBNF that holds the output only from where one of ``triggers`` matches (docs/TOOLS.md)."""

    gbnf: str
    triggers: tuple[str, ...]


def grammar_for(inp: GenerateInput, fmt: ToolFormat) -> Any:
    """What holds ``inp``'s output, or None (free text): a grammar for a required tool call or a
    ``format``, a lazy one for calls the model may make (``tool_choice`` auto), both in the model's
    tool-call format ``fmt`` (a format without a grammar leaves its calls to the parser).

    A schema the converter cannot express is RequestError where the grammar is what the request
    asked for; for optional calls it only costs the lazy grammar (the parser still checks them).
    """
    tools = inp.active_tools
    if tools and inp.call_required:
        required = _calls(fmt, inp, inp.tool_name)
        if required is not None:
            return _module().LlamaGrammar.from_string(required.gbnf, verbose=False)
    if inp.format is not None:
        return _module().LlamaGrammar.from_string(_gbnf(format_schema(inp.format)), verbose=False)
    if tools and not inp.call_required and _lazy_supported():
        try:
            calls = _calls(fmt, inp, None)
        except RequestError:
            return None
        return LazyGrammar(calls.gbnf, calls.triggers) if calls is not None else None
    return None


@cache
def _lazy_supported() -> bool:
    """Whether the installed binding has what a lazy grammar needs (0.3.36 has; the ``llamacpp``
    extra allows older ones, where calls are only parsed, as on RKLLM)."""
    lib = importlib.import_module("llama_cpp")
    ok = all(
        hasattr(lib, f) for f in ("llama_sampler_init_grammar_lazy_patterns", "llama_sampler_chain_remove")
    )
    if not ok:
        log.warning("this llama-cpp-python has no lazy grammars; tool calls are not held to the tools")
    return ok


def _calls(fmt: ToolFormat, inp: GenerateInput, only: str | None) -> CallGrammar | None:
    return fmt.grammar(inp.active_tools, _gbnf, only)


def _gbnf(schema: dict[str, Any]) -> str:
    try:
        return str(_module().json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:  # the converter refuses what it cannot express
        log.warning("schema not usable as a grammar", error=str(exc))
        raise RequestError(f"the schema cannot be turned into a grammar: {exc}") from exc


@cache
def llama_class(lib: Any) -> type:
    """``lib.Llama`` with a sampler chain that also takes a :class:`LazyGrammar` as ``grammar``.

    The lazy grammar goes first in the chain built for the other settings: it only sets the
    logits of tokens it forbids to -inf, which every later stage (penalties, top-k, ...) keeps.
    """

    class Llama(lib.Llama):  # type: ignore[misc]
        def _init_sampler(self, *args: Any, grammar: Any = None, **kwargs: Any) -> Any:
            if not isinstance(grammar, LazyGrammar):
                return super()._init_sampler(*args, grammar=grammar, **kwargs)
            sampler = super()._init_sampler(*args, grammar=None, **kwargs)
            _prepend(lib, sampler.sampler, _lazy_sampler(lib, self._model.vocab, grammar))
            return sampler

    return Llama


def _lazy_sampler(lib: Any, vocab: Any, grammar: LazyGrammar) -> Any:
    patterns = (ctypes.c_char_p * len(grammar.triggers))(*(t.encode() for t in grammar.triggers))
    sampler = lib.llama_sampler_init_grammar_lazy_patterns(
        vocab, grammar.gbnf.encode(), b"root", patterns, len(grammar.triggers), None, 0
    )
    if not sampler:  # llama.cpp logged why; the rules come from the request's tool schemas
        raise RequestError("the tools' schemas do not make a valid grammar")
    return sampler


def _prepend(lib: Any, chain: Any, first: Any) -> None:
    """Put ``first`` at the head of ``chain`` (a llama_sampler_chain, which takes ownership)."""
    rest = [lib.llama_sampler_chain_remove(chain, 0) for _ in range(lib.llama_sampler_chain_n(chain))]
    for s in (first, *rest):
        lib.llama_sampler_chain_add(chain, s)


def _module() -> Any:
    # Only ever called after open() imported llama_cpp, so this import is a lookup.
    return importlib.import_module("llama_cpp.llama_grammar")
