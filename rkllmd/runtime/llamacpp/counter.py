"""Token counts from a GGUF's vocabulary alone, for threads other than the inference thread.

The loaded runtime may only be called on the inference thread, so counting elsewhere (a
preprocessor on the ingress thread) loads the model's vocabulary by itself: vocab-only, no
weights. One vocabulary per file, kept for the life of the process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rkllmd.runtime.base import LazyCounter, TokenCounter
from rkllmd.runtime.llamacpp._lib import embedded_model_path, import_llama_cpp, route_native_logs

if TYPE_CHECKING:
    from rkllmd.runtime.llamacpp.settings import LlamaCppModelSettings

_counters: dict[Path, LazyCounter] = {}
_lock = threading.Lock()


def token_counter(cfg: LlamaCppModelSettings) -> TokenCounter | None:
    """A counter with the model's own vocabulary, or None when it has no file to read it from."""
    path = cfg.path or embedded_model_path()
    if path is None:
        return None
    with _lock:
        if path not in _counters:
            _counters[path] = LazyCounter(lambda: _load_vocab(path), str(path))
        return _counters[path]


def _load_vocab(path: Path) -> Callable[[str], int] | None:
    lib = import_llama_cpp()
    route_native_logs(lib)
    params = lib.llama_model_default_params()
    params.vocab_only = True
    handle = lib.llama_model_load_from_file(str(path).encode(), params)
    if not handle:
        return None
    vocab = lib.llama_model_get_vocab(handle)  # the handle is never freed: one per file

    def count(text: str) -> int:
        data = text.encode("utf-8")
        n = len(data) + 8
        buf = (lib.llama_token * n)()
        r = int(lib.llama_tokenize(vocab, data, len(data), buf, n, False, False))
        if r < 0:
            buf = (lib.llama_token * -r)()
            r = int(lib.llama_tokenize(vocab, data, len(data), buf, -r, False, False))
        return r

    return count
